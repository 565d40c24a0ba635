# Cython declarations for engine.py (see simulations/native.py): the same code, compiled with C
# types for the attributes and locals named here. Without the build, engine.py runs as it is.
cimport cython

cdef double _INF

cdef class Simulator:
    cdef public list _heap
    cdef public long long _seq
    cdef public double now
    cdef public long long events
    cdef public bint stopped
    cdef Py_ssize_t _n
    cdef double[::1] _keys
    cdef list _callbacks
    cdef list _args
    cdef long long[::1] _free
    cdef Py_ssize_t _nfree
    cdef long long[::1] _pos
    cpdef void at(self, double when, object callback, object arg=*)
    cpdef object schedule(self, double when, object callback, object arg=*)
    @cython.locals(slot=Py_ssize_t)
    cpdef object move(self, object handle, double when)
    cpdef void cancel(self, object handle)
    cpdef void after(self, double delay, object callback, object arg=*)
    @cython.locals(slot=Py_ssize_t)
    cpdef void step(self)
    @cython.locals(heap=list, when=double)
    cpdef void run(self, double until=*, object idle=*)
    @cython.locals(k=Py_ssize_t, size=Py_ssize_t, keys=cython.double[::1], free=cython.longlong[::1],
                   pos=cython.longlong[::1])
    cdef void _grow(self)
    @cython.locals(k=Py_ssize_t, slot=Py_ssize_t)
    cdef Py_ssize_t _push(self, double when, long long seq, object callback, object arg)
    cdef void _place(self, Py_ssize_t k, double when, double seq, double slot)
    @cython.locals(when=double, seq=double, slot=double, parent=Py_ssize_t)
    cdef void _sift_up(self, Py_ssize_t k)
    @cython.locals(when=double, seq=double, slot=double, n=Py_ssize_t, child=Py_ssize_t, right=Py_ssize_t)
    cdef void _sift_down(self, Py_ssize_t k)
    @cython.locals(earlier=bint)
    cdef void _rekey(self, Py_ssize_t k, double when, long long seq)
    @cython.locals(k=Py_ssize_t, n=Py_ssize_t, parent=Py_ssize_t)
    cdef void _remove(self, Py_ssize_t slot)

cdef class Meter:
    cdef public double bin
    cdef public list bins
    cdef public double total
    @cython.locals(first=long, last=long, b=long)
    cpdef void add(self, double start, double end, double rate)
    @cython.locals(k=long)
    cpdef void count(self, double at, double amount)

cdef class Transfer:
    cdef public bint cancelled
    cdef public object data
    cdef public object done
    cdef public list links
    cdef public long pending
    cdef public double size
    cdef public double started

cdef class Link:
    cdef public long active
    cdef public double busy
    cdef public double capacity
    cdef public object fire
    cdef public double[::1] tags
    cdef public long long[::1] seqs
    cdef public list transfers
    cdef public Meter meter
    cdef public str name
    cdef public Simulator sim
    cdef public double stamp
    cdef public object event
    cdef public double vtime
    cdef void _advance(self, double now)
    @cython.locals(k=Py_ssize_t)
    cpdef void add(self, Transfer transfer, long long seq)
    @cython.locals(k=Py_ssize_t)
    cpdef void remove(self, Transfer transfer)
    @cython.locals(last=Py_ssize_t)
    cdef void _drop(self, Py_ssize_t k)
    @cython.locals(delay=double, when=double, best=double, k=Py_ssize_t)
    cdef void _reschedule(self)
    @cython.locals(done=list, job=tuple, limit=double, first=Transfer, first_tag=double, first_seq=cython.longlong,
                   k=Py_ssize_t)
    cpdef void _fire(self, object _=*)

cdef class Network:
    cdef public long long _seq
    cdef public double bytes_started
    cdef public Simulator sim
    cdef public long long started
    @cython.locals(t=Transfer, link=Link)
    cpdef Transfer transfer(self, double size, list links, object done, object data=*)

cdef void _arrived(Transfer transfer)
