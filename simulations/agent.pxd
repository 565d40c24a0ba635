# Cython declarations for agent.py (see simulations/native.py): C types for the attributes and hot
# locals. Piece indices stay Python ints where they are shifted into the 256-bit bitfield masks.
cimport cython

from .engine cimport Link, Simulator


cdef class Board:
    cdef public int[::1] uploads
    cdef public list words
    cdef public list have


cdef class Edge:
    cdef public double busy_until
    cdef public long inflight
    cdef public long limit
    cdef public Node node
    cdef public str peer
    cdef public long pidx
    cdef public long room
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
    cdef public object queue
    cdef public str rack
    cdef public long rack_idx
    cdef public bint seed
    cdef public list swarms
    cdef public dict transfers
    cdef public Link up
    cdef public dict watchers
    cdef public str zone
    cdef public long zone_idx


cdef class Holders:
    cdef public list free
    cdef public unsigned long long[::1] have
    cdef public long words


cdef class Swarm:
    cdef public object cluster
    cdef public object profile
    cdef public Simulator sim
    cdef public long long piece_size
    cdef public long long max_inflight
    cdef public long upload_slots
    cdef public bint load_aware
    cdef public int[::1] uploads
    cdef public unsigned long long[::1] board_have
    cdef public long words
    cdef public unsigned long long[::1] reach
    cdef public Node node
    cdef public object blob
    cdef public long b
    cdef public bytearray have
    cdef public bytearray known
    cdef public list avail
    cdef public bytearray inflight
    cdef public long long inflight_bytes
    cdef public set candidates
    cdef public set blocked
    cdef public set waiting
    cdef public list leases
    cdef public long origin_active
    cdef public bint direct
    cdef public bint reports_direct
    cdef public list report
    cdef public set reported
    cdef public long digest_pos
    cdef public object cursor
    cdef public object rng
    cdef public bint dirty
    cdef public bint done
    cdef public double last_progress
    cdef public long generation
    cdef public bint kicked
    cdef public bint waiting_for_kick
    cdef public long timer
    cdef public bint loop_timer

    @cython.locals(avail=list)
    cpdef void add_holder(self, long i, Edge edge)
    cpdef void drop_holder(self, long i)
    cpdef bint learn_digest(self, long i)
    cpdef void _release(self, long i)
    @cython.locals(c=long, n=long, have=bytearray)
    cpdef void _advance_cursor(self)
    cpdef void wake(self)
    cpdef void run_pass(self)
    @cython.locals(limit=long)
    cpdef void schedule_origin(self)
    @cython.locals(e=Edge, slot=Edge, free=list, blocked=set, candidates=set, now=double, slots=long, room=long,
                   budget=cython.longlong, piece_size=cython.longlong, count=long, inflight=bytearray, node=Node,
                   edges=list, peers=cython.int[::1], uploads=cython.int[::1], have=cython.ulonglong[::1],
                   reach=cython.ulonglong[::1], words=long, k=Py_ssize_t, w=long, base=long, i=long, reachable=list)
    cpdef void schedule_peers(self)
    cpdef void _loop_timer(self)
    @cython.locals(node=Node, watcher=Node, sw=Swarm, edge=Edge, avail=list, b=long, idx=long, length=cython.longlong,
                   one=cython.ulonglong)
    cpdef void store(self, long i, bint from_origin)
    cpdef void kick(self)
    cpdef void announce(self)

