"""Cluster-scale, flow-level simulation of layer distribution, driven by the policies the agents ship.

``simulations.run.run_scenario(load_scenario(path))`` simulates one TOML scenario under p2pdist and
the baselines; ``p2pdist simulate SCENARIO`` is the command-line front end. See README.md here.
"""

from . import native as _native

# Compiled modules (simulations/native.py) only when built from the current sources; else the .py.
_native.choose_core()
