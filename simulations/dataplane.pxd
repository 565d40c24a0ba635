# Cython declarations for the compiled core (simulations/native.py): the extension types this
# module's @cython.locals name.
from .agent cimport Edge, Node, Swarm
from .engine cimport Link, Transfer
