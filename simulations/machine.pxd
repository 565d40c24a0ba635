# Cython declarations for p2pdist/core/download.py, compiled for the simulator as simulations.machine
# (see simulations/native.py, BORROWED): the agent's download machine, with C types for its fields.
cimport cython

# The cell bits as C constants (from Python, read them from p2pdist.core.download).
cdef unsigned int AVAIL, HAVE, KNOWN, INFLIGHT, BLOCKED, PROVED, OFFERED, OFFER_PROVED, CELL
cdef int TELL_NOTHING, TELL_PROOF, TELL_HAVE


cdef class Request:
    cdef public long index
    cdef public object peer
    cdef public long long length
    cdef public double sent
    cdef public str status


cdef class RequestBook:
    cdef public list pending
    cpdef void add(self, Request req)
    @cython.locals(pending=list, k=Py_ssize_t)
    cpdef bint close(self, Request req, str status)


cdef class Avail:
    cdef public unsigned int[::1] cells
    cdef public long base
    cdef public long stride
    cdef public long count


cdef class Download:
    cdef public object shell
    cdef public object settings
    cdef public long long piece_size
    cdef public long count
    cdef public long long last_length
    cdef public long long max_inflight
    cdef public object selector
    cdef public long origin_concurrency
    cdef public bint report_digests
    cdef public bint announce_direct
    cdef public bint cut_through
    cdef public unsigned int[::1] cells
    cdef public long base
    cdef public long stride
    cdef public Avail avail
    cdef public object rng
    cdef public long have_n
    cdef public set fetchable
    cdef public set undigested
    cdef public set blocked
    cdef public bint blocked_is_fetchable
    cdef public long long inflight_bytes
    cdef public long inflight_pieces
    cdef public RequestBook requests
    cdef public double piece_timeout
    cdef public double piece_time
    cdef public list leases
    cdef public long origin_active
    cdef public long long streamed
    cdef public bint direct
    cdef public list report
    cdef public set reported
    cdef public set from_peers_for_lease
    cdef public set orphaned
    cdef public long long digest_pos
    cdef public long long proof_epoch
    cdef public object cursor
    cdef public dict readers
    cdef public dict waiting
    cdef public double reader_wait
    cdef public double last_progress
    cdef public bint dirty
    cdef public bint done
    cdef public int _state
    cdef public bint _kicked
    cdef public long _sent
    cdef public long _failures
    cdef public double _announce_at
    cdef public double _spacing_until
    cdef public double _stall_at
    cdef public double _loop_at
    cdef public double _armed

    cpdef long long length(self, long i)
    cpdef bint has(self, long i)
    cpdef bint _inflight(self, long i)
    cpdef bint _had_or_inflight(self, long i)
    cpdef bint _not_for_origin(self, long i)
    @cython.locals(pos=long, c=cython.uint)
    cpdef void add_holder(self, long i, bint free=*, double now=*)
    @cython.locals(pos=long, c=cython.uint)
    cpdef void drop_holder(self, long i)
    @cython.locals(pos=long, c=cython.uint)
    cpdef bint learn_digest(self, long i)
    cpdef bint takes_proofs(self, long long epoch)
    @cython.locals(i=long, learned=bint)
    cpdef void proofs_checked(self, object indices, double now)
    @cython.locals(pos=long, c=cython.uint)
    cpdef void _prove(self, long i)
    cpdef void _add_fetchable(self, long i)
    cpdef void _drop_fetchable(self, long i)
    cpdef void _start(self, long i)
    @cython.locals(pos=long, c=cython.uint)
    cpdef void _settle(self, long i)
    cpdef void wake(self)
    cpdef void kick(self)
    @cython.locals(pos=long, c=cython.uint, tell=int)
    cpdef bint piece_stored(self, long i, bint from_origin, double now)
    cpdef void schedule(self, double now)
    @cython.locals(budget=cython.longlong, piece_size=cython.longlong, count=long, length=cython.longlong,
                   req=Request, fetchable=set)
    cpdef void _schedule_peers(self, double now)
    @cython.locals(pos=long, c=cython.uint)
    cpdef void piece_arriving(self, Request req)
    cpdef bint offering(self, long i)
    @cython.locals(pos=long, c=cython.uint)
    cpdef void request_done(self, Request req, str status, double now)
    cpdef void tick(self, double now)
    @cython.locals(due=double, at=double)
    cpdef double next_deadline(self)
    @cython.locals(due=double)
    cpdef void _arm(self, double now)
    @cython.locals(cells=cython.uint[::1], base=long, stride=long, i=long)
    cpdef void _unblock(self)
    @cython.locals(cells=cython.uint[::1], base=long, stride=long, i=long, was=bint, blocked=set, pieces=set)
    cpdef void _block_fetchable(self)
    cpdef void _block_all(self, double now)
    cpdef void _loop_timer(self, double now)
    @cython.locals(cells=cython.uint[::1], base=long, stride=long, i=long)
    cpdef void _report_had(self, long start, long end)
    @cython.locals(s=long, e=long, i=long)
    cpdef void origin_done(self, list runs, double now)
    cpdef void follow(self, object reader, long index, double now)
