"""The ``p2pdist`` command: the daemon, fetch, configure, demo and simulate."""
