"""Sans-I/O core: pure, deterministic logic with no sockets, clocks or disk.

Shells (agent, tracker, simulator) feed it bytes and events and carry out its decisions.
"""
