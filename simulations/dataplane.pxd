# Cython declarations for the compiled core (simulations/native.py): the extension types this
# module's @cython.locals name, and the Cluster's fields its hot paths read (DataPlane is the
# Cluster's one extension base: a field here is a C read, an attribute of the Cluster a dict lookup).
cimport cython

from .agent cimport BlobRows, Board, Neighbour, Node, Swarm
from .engine cimport Link, Network, Simulator, Transfer
from .machine cimport Request


cdef class DataPlane:
    cdef public Simulator sim
    cdef public Network net
    cdef public Board board
    cdef public int[::1] uploads
    cdef public object profile
    cdef public list dirty
    cdef public bint tracking
    cdef public long long _tid
    cdef public object _timeouts
    cdef public bint _timeout_armed
    cdef public object room_rng
    cdef public object flush_rng
    cdef public long long busy_replies
    cdef public long long timeouts
    cdef public double rtt
    cdef public double origin_rtt
    cdef public Link origin_link
    cdef public list rack_up
    cdef public list rack_down
    cdef public list zone_up
    cdef public list zone_down
    # The profile's numbers the data plane reads per piece (set_limits).
    cdef public long upload_slots
    cdef public bint upload_queue
    cdef public bint load_aware
    cdef public double piece_timeout
    cdef public object peer_done
    cdef public set deferred
    cdef public list arriving
    cdef public double block_bits

    # The per-piece methods, called from C (their locals typed here, not in dataplane.py).
    @cython.locals(links=list)
    cpdef list path(self, Node src, Node dst)
    cpdef list origin_path(self, Node dst)
    cpdef void track(self, Transfer t, Node receiver, Node sender)
    @cython.locals(receiver=Node, sender=Node)
    cpdef object _untrack(self, Transfer t)
    @cython.locals(sw=Swarm)
    cpdef void _next_upload(self, Node peer)
    @cython.locals(edge=Neighbour, peer=Node, t=Transfer, have=bytearray, up=Swarm, waiting=list)
    cpdef void _upload(self, Swarm sw, Request req)
    @cython.locals(sw=Swarm, n=long, k=long, j=long, pos=long, widx=long, b=long, rows=list, row=BlobRows,
                   swarms=list)
    cpdef void _room(self, Node peer)
    @cython.locals(edge=Neighbour)
    cpdef void _peer_failed(self, Swarm sw, Request req)
    @cython.locals(edge=Neighbour)
    cpdef void _request_failed(self, Swarm sw, Request req)
    @cython.locals(sw=Swarm, req=Request, edge=Neighbour, peer=Node, head=Transfer)
    cpdef void _end_upload(self, Transfer t, bint delivered)
