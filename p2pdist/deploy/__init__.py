"""Install p2pdist on a cluster: Kubernetes manifests rendered from one typed set of values.

``values`` holds the values model and its loader (defaults < TOML file < ``--set``);
``kubernetes`` renders the install (and the uninstall) as plain dicts and YAML;
``topology`` is what the agent's init container runs to learn its node's zone and rack.
"""
