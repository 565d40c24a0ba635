# Cython declarations for agent.py (see simulations/native.py): C types for the attributes and hot
# locals. Piece indices stay Python ints where they are shifted into the 256-bit bitfield masks.
cimport cython

from .engine cimport Link, Simulator


cdef unsigned int AVAIL, HAVE, KNOWN, INFLIGHT, BLOCKED


cdef class Board:
    cdef public list nodes
    cdef public int[::1] uploads
    cdef public list words
    cdef public list have
    cdef public list cells
    cdef public list live
    cdef public list blocking


cdef class Avail:
    cdef public unsigned int[::1] cells
    cdef public long base
    cdef public long count


cdef class Edge:
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
    cdef public object queue
    cdef public str rack
    cdef public long rack_idx
    cdef public bint seed
    cdef public list swarms
    cdef public dict transfers
    cdef public Link up
    cdef public int[::1] w_idx
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
    cdef public long count
    cdef public unsigned int[::1] cells
    cdef public long base
    cdef public Avail avail
    cdef public unsigned char[::1] blocking
    cdef public unsigned char[::1] board_live
    cdef public list board_nodes
    cdef public bytearray inflight
    cdef public long long inflight_bytes
    cdef public set candidates
    cdef public set blocked
    cdef public bint blocked_is_candidates
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

    @cython.locals(i=Py_ssize_t, pos=Py_ssize_t)
    cpdef void _init_cells(self)
    @cython.locals(pos=long)
    cpdef void add_holder(self, long i, Edge edge)
    @cython.locals(pos=long)
    cpdef void drop_holder(self, long i)
    cpdef bint learn_digest(self, long i)
    cpdef void _release(self, long i)
    cpdef void _add_candidate(self, long i)
    cpdef void _drop_candidate(self, long i)
    cpdef void set_inflight(self, long i, bint on)
    @cython.locals(node=Node)
    cdef inline long _room_at(self, Py_ssize_t k, double now)
    cpdef void _block_all(self)
    @cython.locals(cells=cython.uint[::1], base=long, i=long)
    cpdef void _unblock(self)
    @cython.locals(cells=cython.uint[::1], base=long, i=long)
    cpdef void _block(self, object pieces)
    @cython.locals(c=long, n=long, have=bytearray)
    cpdef void _advance_cursor(self)
    cpdef void wake(self)
    cpdef void run_pass(self)
    @cython.locals(limit=long)
    cpdef void schedule_origin(self)
    @cython.locals(e=Edge, slot=Edge, free=list, blocked=set, candidates=set, now=double, slots=long, room=long,
                   budget=cython.longlong, piece_size=cython.longlong, count=long, inflight=bytearray, node=Node,
                   edges=list, words=long, k=Py_ssize_t, n=Py_ssize_t, w=long, base=long, i=long, reachable=list, nfree=long)
    cpdef void schedule_peers(self)
    cpdef void _loop_timer(self)
    @cython.locals(node=Node, watcher=Node, sw=Swarm, edge=Edge, b=long, idx=long, length=cython.longlong,
                   one=cython.ulonglong, count=long, nodes=list, k=Py_ssize_t, widx=long, pos=long, c=cython.uint)
    cpdef void store(self, long i, bint from_origin)
    cpdef void kick(self)
    cpdef void announce(self)

