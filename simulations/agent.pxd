# Cython declarations for agent.py (see simulations/native.py): C types for the attributes and hot
# locals. Piece indices stay Python ints where they are shifted into the 256-bit bitfield masks.
cimport cython

from .engine cimport Link, Meter, Simulator
from .machine cimport Download

cdef unsigned int AVAIL, BLOCKED, CELL, HAVE, INFLIGHT, KNOWN, OFFERED, OFFER_PROVED, PROVED
cdef int TELL_HAVE, TELL_PROOF
cdef unsigned char BLOCKING, NEWS

cdef class Swarm
cdef class Holders


cdef class BlobRows:
    cdef public unsigned long long[::1] have
    cdef public unsigned int[::1] cells
    cdef public unsigned char[::1] blocking
    cdef public long words
    cdef public long count
    cdef public long stride
    @cython.locals(words=long, pb=long, wb=long, base=long, stride=long, one=cython.ulonglong, w=long, s=long,
                   bits=cython.ulonglong)
    cpdef bint room_wakes(self, long node, long peer)


cdef class Board:
    cdef public long stride
    cdef public list nodes
    cdef public list rows
    cdef public int[::1] uploads
    cdef public list words
    cdef public list have
    cdef public list cells
    cdef public list live
    cdef public list swarms
    cdef public list blocking


cdef class Neighbour:
    cdef public long bad_pieces
    cdef public long failures
    cdef public double busy_until
    cdef public long inflight
    cdef public long limit
    cdef public Node node
    cdef public str peer
    cdef public long pidx
    cdef public Node owner
    cdef public long pos
    cpdef double ready_at(self)
    cpdef void changed(self)
    cpdef void add_request(self, long delta)
    cdef public long room
    cdef public long long room_pass
    cdef public double score


cdef class Node:
    cdef public bint alive
    cdef public double arrived
    cdef public list bits
    cdef public Board board
    cdef public set dialing
    cdef public double done_at
    cdef public Link down
    cdef public list edge_list
    cdef public dict edges
    cdef public int[::1] e_peer
    cdef public double[::1] e_ready
    cdef public object from_origin
    cdef public object from_peers
    cdef public long generation
    cdef public list have_n
    cdef public long idx
    cdef public bint is_origin
    cdef public long layers_done
    cdef public double left_at
    cdef public str name
    cdef public long next_layer
    cdef public long long passes
    cdef public object queue
    cdef public str rack
    cdef public long rack_idx
    cdef public bint seed
    cdef public list swarms
    cdef public dict transfers
    cdef public Link up
    cdef public int[::1] w_idx
    cdef public list w_edge
    cdef public dict watchers
    cdef public str zone
    cdef public long zone_idx


cdef class Holders:
    cdef public Swarm owner


cdef class Swarm:
    cdef public object cluster
    cdef public object profile
    cdef public Simulator sim
    cdef public int[::1] uploads
    cdef public unsigned long long[::1] board_have
    cdef public long words
    cdef public unsigned long long[::1] reach
    cdef public int[::1] free_k
    cdef public int[::1] free_room
    cdef public long nfree
    cdef public long upload_slots
    cdef public bint load_aware
    cdef public Node node
    cdef public object blob
    cdef public long b
    cdef public long count
    cdef public bytearray have
    cdef public unsigned int[::1] cells
    cdef public long base
    cdef public long stride
    cdef public unsigned char[::1] blocking_flags
    cdef public unsigned char[::1] board_live
    cdef public list board_swarms
    cdef public long nidx
    cdef public Holders holders_view
    cdef public bint dirty
    cdef public list wakeups
    cdef public Meter delivered
    cdef public bint room_only
    cdef public list room_peers
    cdef public bint done
    cdef public long generation
    cdef public bint streaming
    cdef public Download dl
    cdef public dict waiters

    cpdef bint alive(self)
    @cython.locals(c=long, n=long, have=bytearray)
    cpdef void _follow_reader(self)
    cpdef void add_holder(self, long i, Neighbour edge)
    cpdef void drop_holder(self, long i)
    cpdef void run_pass(self)
    @cython.locals(k=Py_ssize_t)
    cdef bint _rooms_taken(self)
    cpdef void wake(self)
    cpdef void clean(self)
    cpdef void wake_room(self, long peer)
    @cython.locals(node=Node, words=long, k=Py_ssize_t, w=long, base=long, nfree=long, room=long)
    cpdef object holders(self, double now)
    @cython.locals(node=Node, length=cython.longlong, one=cython.ulonglong)
    cpdef void stored(self, long i, bint from_origin, int tell)
    @cython.locals(one=cython.ulonglong)
    cpdef void offer(self, long i)
    cpdef void unoffer(self, long i)
    @cython.locals(one=cython.ulonglong)
    cdef void _unboard(self, long i)
    @cython.locals(i=long, pos=long)
    cpdef void withdraw(self)
    @cython.locals(node=Node, sw=Swarm, edge=Neighbour, proved=cython.uint,
                   one=cython.ulonglong, k=Py_ssize_t, widx=long, pos=long, c=cython.uint,
                   words=long, w=long, shift=long, stride=long)
    cpdef void _have(self, long i, bint have)
