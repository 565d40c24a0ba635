# cython: language_level=3
"""CPython's small-object arenas on transparent huge pages (compiled only; see ``install``).

A 10,000-node run reaches ~0.4 GB of small Python objects at random (every stored piece updates
~40 neighbours' state), and with 4 KiB pages most of those reads also miss the TLB. CPython's
allocator (pymalloc) takes its 1 MiB arenas from mmap, one mapping each, which the kernel never
backs with 2 MiB pages. ``install`` hands pymalloc arenas cut from one reserved region that is
advised to use huge pages (MADV_HUGEPAGE, which the kernel's "madvise" mode honours), so the same
objects sit on a few hundred huge pages. Arenas are not returned to the kernel: a freed one is
kept for the next request. When the region is full, or for arenas of another size, the allocator
that was installed before answers. Nothing else changes: same objects, same numbers.
"""

from posix.mman cimport (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FAILED,
    MAP_NORESERVE,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    madvise,
    mmap,
    munmap,
)


cdef extern from "Python.h":
    ctypedef struct PyObjectArenaAllocator:
        void *ctx
        void *(*alloc)(void *ctx, size_t size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil

    void PyObject_GetArenaAllocator(PyObjectArenaAllocator *allocator)
    void PyObject_SetArenaAllocator(PyObjectArenaAllocator *allocator)


cdef size_t HUGE = 2 << 20  # a transparent huge page on x86-64 and arm64 (4 KiB base pages)

cdef PyObjectArenaAllocator _previous
cdef char *_start = NULL  # the region, aligned to HUGE
cdef size_t _size = 0
cdef size_t _used = 0
cdef size_t _arena = 0  # the size pymalloc asks for (one size per interpreter build)
cdef void *_spare = NULL  # freed arenas of that size, linked through their first word
cdef size_t _handed = 0  # arenas handed out from the region so far (for the tests)


cdef void *_alloc(void *ctx, size_t size) noexcept nogil:
    global _used, _spare, _arena, _handed
    cdef void *p
    if _arena == 0:
        _arena = size
    if size == _arena:
        if _spare != NULL:
            p = _spare
            _spare = (<void **>p)[0]
            return p
        if _used + size <= _size:
            p = _start + _used
            _used += size
            _handed += 1
            return p
    return _previous.alloc(_previous.ctx, size)


cdef void _free(void *ctx, void *ptr, size_t size) noexcept nogil:
    global _spare
    cdef char *p = <char *>ptr
    if _start != NULL and p >= _start and p < _start + _size:
        (<void **>ptr)[0] = _spare  # kept for the next arena: never handed back to the kernel
        _spare = ptr
        return
    _previous.free(_previous.ctx, ptr, size)  # an arena from before install, or past the region


def install(size_t reserve=16 << 30) -> bool:
    """Reserve ``reserve`` bytes of address space (not memory: pages are touched as arenas are
    used) advised for huge pages, and give pymalloc its new arenas from there. False if the kernel
    refuses the reservation or the advice (then nothing changed); True if installed, or if it
    already was."""
    global _start, _size
    cdef PyObjectArenaAllocator mine
    cdef void *base
    cdef size_t skew
    if _start != NULL:
        return True
    base = mmap(NULL, reserve + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    if base == MAP_FAILED:
        return False
    skew = (HUGE - (<size_t>base) % HUGE) % HUGE  # the first huge-page boundary in the mapping
    if madvise(<char *>base + skew, reserve, MADV_HUGEPAGE) != 0:
        munmap(base, reserve + HUGE)  # no huge pages to be had: give the address space back
        return False
    _start = <char *>base + skew
    _size = reserve
    PyObject_GetArenaAllocator(&_previous)
    mine.ctx = NULL
    mine.alloc = _alloc
    mine.free = _free
    PyObject_SetArenaAllocator(&mine)
    return True


def arenas() -> int:
    """How many arenas the region has handed out (0 before ``install``)."""
    return _handed


def region() -> tuple[int, int]:
    """The region's first address and size in bytes ((0, 0) before ``install``)."""
    return <size_t>_start, _size
