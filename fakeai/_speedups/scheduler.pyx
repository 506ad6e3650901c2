# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# Token scheduler, compiled. Pure-Python twin: _scheduler_py.py (same API).
#
# Theory of operation
# -------------------
# Every token of every stream is due at an absolute deadline in monotonic ns
# (t0 + ttft + i*itl). Rather than one asyncio timer per token, one Scheduler
# per event loop keeps all deadlines in a single binary min-heap and owns a
# single wake-up source armed for the earliest deadline.
#
# * The heap is a C array of Entry structs {deadline, seq, handle*}: keys sit
#   inline, so a sift compares plain integers and never touches the Handle
#   except to record its new position (Handle._pos). That position makes the
#   heap "indexed": Handle.cancel() removes its entry in O(log n) (move the
#   last entry into the hole, sift it up or down) instead of leaving a corpse.
#   seq is a per-scheduler insertion counter, so equal deadlines fire FIFO.
#   The heap owns one reference to each pending Handle; a Handle refers back
#   to its Scheduler only while pending (fire, cancel and close() clear it).
#
# * Wake-up source: uvloop rounds timers to whole milliseconds, so on Linux we
#   create a timerfd (CLOCK_MONOTONIC, non-blocking, close-on-exec), register
#   it once with loop.add_reader, and arm it with an absolute nanosecond
#   expiry (TFD_TIMER_ABSTIME); the kernel hrtimer wakes epoll within
#   microseconds of the deadline. If timerfd is unavailable (non-Linux,
#   EMFILE, a loop without add_reader) we fall back to one loop.call_at timer,
#   converted from the ns deadline to the loop.time() base.
#
# * A wake reads the clock ONCE (now), then pops and calls every entry whose
#   deadline <= now + SLACK_NS in (deadline, seq) order as callback(arg, now).
#   Entries added by callbacks during the wake that are already due are
#   popped by the same loop, so they fire in this wake and are never lost.
#   An exception in a callback goes to loop.call_exception_handler and
#   dispatch continues (SystemExit and KeyboardInterrupt propagate, as in
#   asyncio.Handle._run).
#
# * Arming: call_at() outside a wake arms only if the new entry became the
#   heap top and is earlier than what is armed. During a wake nothing is
#   armed until the end, when we arm once for the new top (one
#   timerfd_settime per wake), or disarm if the heap is empty. cancel() never
#   re-arms: an early timer costs one spurious wake that re-arms correctly.
#   timerfd_settime also resets the fd's expiration count, so a wake that
#   fired anything needs no read(2) to clear readiness: only a wake that found
#   nothing due drains the fd. So a wake costs epoll + one settime syscall.
#
# * The call_at fallback has the pure twin's rule for ms-rounding loops
#   (uvloop): after an early wake, re-arm at least 1 ms out, never spin.
#
# * Hot path cost per token: one Handle (cdef class on a freelist), one
#   sift-up, one sift-down, one vectorcall. No per-wake sorting, no tuples.
#
# Callbacks run in the context (contextvars) in which the scheduler's wake-up
# was registered, not the context of the call_at() caller.

cimport cython
from libc.stdint cimport int64_t, uint64_t
from cpython.mem cimport PyMem_Realloc, PyMem_Free
from cpython.ref cimport PyObject
from cpython.long cimport PyLong_Check

cdef extern from "Python.h":
    void _incref "Py_INCREF"(PyObject*)
    void _decref "Py_DECREF"(PyObject*)

# The timerfd/clock primitives, in C so that non-Linux platforms still build
# (timerfd_create then fails with ENOSYS and the call_at fallback is used).
cdef extern from *:
    """
    #include <errno.h>
    #include <string.h>
    #include <stdint.h>
    #include <time.h>
    #include <unistd.h>
    #if defined(__linux__)
    #include <sys/timerfd.h>
    #define FAKEAI_HAVE_TIMERFD 1
    #else
    #define FAKEAI_HAVE_TIMERFD 0
    #endif

    static inline int64_t fakeai_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + (int64_t)ts.tv_nsec;
    }

    static int fakeai_tfd_create(void) {
    #if FAKEAI_HAVE_TIMERFD
        return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }

    /* Arm for absolute monotonic deadline_ns (> 0), or disarm if 0. */
    static inline int fakeai_tfd_arm(int fd, int64_t deadline_ns) {
    #if FAKEAI_HAVE_TIMERFD
        struct itimerspec its;
        memset(&its, 0, sizeof its);
        its.it_value.tv_sec = (time_t)(deadline_ns / 1000000000LL);
        its.it_value.tv_nsec = (long)(deadline_ns % 1000000000LL);
        return timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL);
    #else
        (void)fd; (void)deadline_ns;
        errno = ENOSYS;
        return -1;
    #endif
    }

    /* 1: the timer expired (and is now disarmed); 0: nothing to read. */
    static inline int fakeai_tfd_drain(int fd) {
        uint64_t expirations;
        ssize_t r;
        do {
            r = read(fd, &expirations, sizeof expirations);
        } while (r < 0 && errno == EINTR);
        return r == (ssize_t)sizeof expirations;
    }

    static inline void fakeai_fd_close(int fd) { close(fd); }
    """
    int64_t fakeai_now_ns() nogil
    int fakeai_tfd_create() nogil
    int fakeai_tfd_arm(int fd, int64_t deadline_ns) nogil
    int fakeai_tfd_drain(int fd) nogil
    void fakeai_fd_close(int fd) nogil

from libc.errno cimport errno
import os as _os

# Entries due within this much of the wake's clock reading fire in that wake,
# so deadlines a few microseconds apart share one wake instead of each paying
# for a timer re-arm and an epoll round trip.
cdef int64_t _SLACK_NS = 20_000
SLACK_NS = _SLACK_NS

ctypedef struct Entry:
    int64_t deadline
    uint64_t seq
    PyObject* handle          # owned reference to a Handle


cdef inline bint _lt(Entry* a, Entry* b) noexcept nogil:
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.seq < b.seq)


def now_ns():
    """Monotonic clock in ns (the same clock as time.monotonic_ns())."""
    return fakeai_now_ns()


cdef class Scheduler


# no_gc: a Handle can sit in a reference cycle (arg -> stream -> handle) only
# while pending, and then the heap's own reference keeps it alive anyway;
# firing, cancel() and close() drop callback/arg/scheduler. So the cyclic GC
# has nothing to find here, and not tracking one object per token spares
# the collector a gen-0 pass every few hundred tokens.
@cython.final
@cython.no_gc
@cython.auto_pickle(False)
@cython.freelist(512)
cdef class Handle:
    """One scheduled call. Returned by Scheduler.call_at()."""
    cdef object _callback
    cdef object _arg
    cdef Scheduler _sched      # set only while pending in the heap
    cdef Py_ssize_t _pos       # index in the heap while pending
    cdef readonly int64_t deadline_ns
    cdef readonly bint cancelled

    def cancel(self):
        """Remove from the heap in O(log n). No-op if already fired/cancelled."""
        cdef Scheduler s = self._sched
        if s is None:
            return
        self.cancelled = True
        s._take(self._pos)
        self._callback = None
        self._arg = None

    def __repr__(self):
        state = "cancelled" if self.cancelled else ("pending" if self._sched is not None else "done")
        return f"<Handle {state} deadline_ns={self.deadline_ns} callback={self._callback!r}>"


cdef inline void _setpos(PyObject* p, Py_ssize_t i) noexcept:
    (<Handle>p)._pos = i


@cython.final
@cython.auto_pickle(False)
cdef class Scheduler:
    """All token deadlines of one event loop, one wake-up per due time."""
    cdef Entry* _heap
    cdef Py_ssize_t _n
    cdef Py_ssize_t _cap
    cdef uint64_t _seq
    cdef int _fd
    cdef int64_t _armed         # absolute deadline the wake-up is armed for; 0 = disarmed
    cdef bint _dispatching
    cdef bint _closed
    cdef bint _early            # fallback timer fired before the head was due
    cdef object _timer          # fallback asyncio TimerHandle
    cdef readonly object loop
    cdef readonly bint uses_timerfd

    def __cinit__(self):
        self._heap = NULL
        self._fd = -1

    def __init__(self, loop):
        self.loop = loop
        cdef int fd = fakeai_tfd_create()
        if fd >= 0:
            try:
                loop.add_reader(fd, self._on_readable)
            except Exception:  # e.g. a loop without add_reader
                fakeai_fd_close(fd)
            else:
                self._fd = fd
                self.uses_timerfd = True

    def __dealloc__(self):
        cdef Py_ssize_t i
        cdef Py_ssize_t n = self._n
        self._n = 0
        if self._heap != NULL:
            for i in range(n):
                _decref(self._heap[i].handle)
            PyMem_Free(self._heap)
            self._heap = NULL
        if self._fd >= 0:
            fakeai_fd_close(self._fd)
            self._fd = -1

    # ---- heap ---------------------------------------------------------

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self._cap * 2 if self._cap else 64
        cdef Entry* h = <Entry*>PyMem_Realloc(self._heap, cap * sizeof(Entry))
        if h == NULL:
            raise MemoryError()
        self._heap = h
        self._cap = cap
        return 0

    cdef void _sift_up(self, Py_ssize_t i) noexcept:
        cdef Entry* heap = self._heap
        cdef Entry e = heap[i]
        cdef Py_ssize_t p
        while i > 0:
            p = (i - 1) >> 1
            if not _lt(&e, &heap[p]):
                break
            heap[i] = heap[p]
            _setpos(heap[i].handle, i)
            i = p
        heap[i] = e
        _setpos(e.handle, i)

    cdef void _sift_down(self, Py_ssize_t i) noexcept:
        cdef Entry* heap = self._heap
        cdef Py_ssize_t n = self._n
        cdef Entry e = heap[i]
        cdef Py_ssize_t c
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and _lt(&heap[c + 1], &heap[c]):
                c += 1
            if not _lt(&heap[c], &e):
                break
            heap[i] = heap[c]
            _setpos(heap[i].handle, i)
            i = c
        heap[i] = e
        _setpos(e.handle, i)

    cdef Handle _take(self, Py_ssize_t i):
        """Remove entry i; return its Handle, detached (no longer pending)."""
        cdef Entry* heap = self._heap
        cdef PyObject* p = heap[i].handle
        cdef Handle h = <Handle>p                  # our own reference
        cdef Py_ssize_t last = self._n - 1
        self._n = last
        if i != last:
            heap[i] = heap[last]
            if i > 0 and _lt(&heap[i], &heap[(i - 1) >> 1]):
                self._sift_up(i)
            else:
                self._sift_down(i)
        h._sched = None
        h._pos = -1
        _decref(p)                                 # the heap's reference
        return h

    # ---- public API ---------------------------------------------------

    def call_at(self, deadline_ns, callback, arg=None):
        """Call callback(arg, now_ns) once now_ns >= deadline_ns (an int). Returns a Handle."""
        cdef Handle h
        cdef Py_ssize_t i
        cdef int64_t d
        if not PyLong_Check(deadline_ns):  # as the twin: a float would silently truncate
            raise TypeError(f"deadline must be an int (ns), not {type(deadline_ns).__name__}")
        d = deadline_ns
        if self._closed:
            raise RuntimeError("Scheduler is closed")
        if self._n == self._cap:
            self._grow()
        h = Handle.__new__(Handle)
        h._callback = callback
        h._arg = arg
        h.deadline_ns = d
        h._sched = self
        i = self._n
        self._n = i + 1
        self._heap[i].deadline = d
        self._heap[i].seq = self._seq
        self._seq += 1
        self._heap[i].handle = <PyObject*>h
        _incref(<PyObject*>h)
        self._sift_up(i)
        if (h._pos == 0 and not self._dispatching
                and (self._armed == 0 or d < self._armed)):
            self._arm(d)
        return h

    def __len__(self):
        return self._n

    @property
    def closed(self):
        return self._closed

    @property
    def fd(self):
        """The timerfd (-1 if not using one, or closed)."""
        return self._fd

    def close(self):
        """Drop every pending entry (they never fire) and release the timer."""
        cdef Py_ssize_t i, n
        cdef PyObject* p
        cdef Handle h
        cdef Entry* heap
        if self._closed:
            return
        self._closed = True
        self._armed = 0
        if self._fd >= 0:
            try:
                self.loop.remove_reader(self._fd)
            except Exception:  # loop already closed
                pass
            fakeai_fd_close(self._fd)
            self._fd = -1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # call_at() now raises, so nothing can append while we release.
        heap = self._heap
        n = self._n
        self._heap = NULL
        self._n = 0
        self._cap = 0
        for i in range(n):
            p = heap[i].handle
            h = <Handle>p
            h._sched = None
            h._pos = -1
            h.cancelled = True
            h._callback = None
            h._arg = None
            _decref(p)
        h = None
        PyMem_Free(heap)

    # ---- wake-up ------------------------------------------------------

    cdef int _arm(self, int64_t target) except -1:
        if target < 1:
            target = 1                    # 0 would mean "disarm" to timerfd
        if self._fd >= 0:
            if fakeai_tfd_arm(self._fd, target) < 0:
                raise OSError(errno, _os.strerror(errno))
        else:
            if self._timer is not None:
                self._timer.cancel()
            loop = self.loop
            delay = (target - fakeai_now_ns()) * 1e-9
            if self._early:
                # After an early wake, wait at least 1 ms: a ms-rounding loop
                # would turn a sub-ms delay into call_soon, i.e. a busy spin.
                self._early = False
                if delay < 1e-3:
                    delay = 1e-3
            self._timer = loop.call_at(loop.time() + delay, self._on_timer)
        self._armed = target
        return 0

    cdef int _disarm(self) except -1:
        if self._fd >= 0:
            fakeai_tfd_arm(self._fd, 0)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = 0
        return 0

    def _on_readable(self):
        # No read(2) on the usual path: a wake that finds entries due always
        # ends in timerfd_settime (re-arm or disarm), which resets the
        # expiration count and so the fd's readiness. Only a wake that found
        # nothing due drains the fd, in case the kernel still counts one.
        if self._fd >= 0 and self._run() == 0:
            if fakeai_tfd_drain(self._fd):
                self._armed = 0           # it had expired after all: re-arm
                self._rearm()

    def _on_timer(self):
        self._timer = None
        self._armed = 0
        self._run()

    cdef Py_ssize_t _run(self) except -1:
        """One wake: dispatch everything due, re-arm. Returns how many fired."""
        cdef int64_t now = fakeai_now_ns()
        cdef int64_t limit = now + _SLACK_NS
        cdef object py_now = now
        cdef Handle h
        cdef object cb, arg
        cdef Py_ssize_t fired = 0
        self._dispatching = True
        try:
            while self._n > 0 and self._heap[0].deadline <= limit:
                h = self._take(0)
                fired += 1
                cb = h._callback
                arg = h._arg
                h._callback = None
                h._arg = None
                try:
                    cb(arg, py_now)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self.loop.call_exception_handler({
                        "message": f"Exception in scheduler callback {cb!r}",
                        "exception": exc,
                        "handle": h,
                    })
        finally:
            self._dispatching = False
            if fired == 0 and self._fd < 0:
                self._early = True        # the loop's timer fired early (uvloop: ms rounding)
            self._rearm()
        return fired

    cdef int _rearm(self) except -1:
        """Arm for the heap top (if not already), or disarm when empty."""
        if self._closed:
            return 0
        if self._n > 0:
            if self._heap[0].deadline != self._armed:
                self._arm(self._heap[0].deadline)
        elif self._armed != 0:
            self._disarm()
        return 0

    def __repr__(self):
        return (f"<Scheduler pending={self._n} timerfd={bool(self.uses_timerfd)} "
                f"closed={bool(self._closed)}>")


cdef dict _schedulers = {}


def get_scheduler(loop):
    """The Scheduler of `loop`, created on first use.

    Cached by id(loop); schedulers of loops that have since closed are closed
    and dropped whenever a new one is created.
    """
    cdef Scheduler s = _schedulers.get(id(loop))
    if s is not None and s.loop is loop and not s._closed and not loop.is_closed():
        return s
    for key, old in list(_schedulers.items()):
        if key == id(loop) or (<Scheduler>old)._closed or (<Scheduler>old).loop.is_closed():
            (<Scheduler>old).close()
            del _schedulers[key]
    s = Scheduler(loop)
    _schedulers[id(loop)] = s
    return s
