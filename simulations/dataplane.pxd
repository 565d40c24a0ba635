# Cython declarations for the compiled core (simulations/native.py): the extension types this
# module's @cython.locals name.
from .agent cimport Neighbour, Node, Swarm
from .engine cimport Link, Transfer
