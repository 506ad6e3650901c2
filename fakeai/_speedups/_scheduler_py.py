# Token scheduler, pure-Python twin of scheduler.pyx (same API, same semantics).
#
# Theory of operation
# -------------------
# Every token of every stream is due at an absolute deadline in monotonic ns
# (t0 + ttft + i*itl). Rather than one asyncio timer per token, one Scheduler
# per event loop keeps all deadlines in a single binary min-heap and owns a
# single wake-up: one loop.call_at timer armed for the earliest deadline.
#
# * The heap is a list of Handles ordered by Handle._key, the pair
#   (deadline_ns, seq) packed into one int (deadline << 64 | seq) so a sift
#   step is a single comparison; seq is a per-scheduler insertion counter, so
#   equal deadlines fire FIFO. Each Handle stores its heap index (_pos): the
#   heap is "indexed", and Handle.cancel() removes its entry in O(log n) (move
#   the last entry into the hole, sift it up or down). A Handle refers back to
#   its Scheduler only while pending (fire, cancel and close() clear it).
#
# * Wake-up: loop.call_at(loop.time() + (deadline - now_ns()) / 1e9). Loops
#   keep timers coarser than ns: uvloop rounds the delay to the nearest ms on
#   a clock cached per loop iteration, so it may wake early, and a sub-ms delay
#   becomes call_soon. A wake that finds nothing due re-arms for at least 1 ms
#   (never a busy spin), so on uvloop this twin is typically up to ~1 ms late.
#   The compiled twin uses a timerfd instead and is far more precise.
#
# * A wake reads the clock ONCE (now), then pops and calls every entry whose
#   deadline <= now + SLACK_NS in (deadline, seq) order as callback(arg, now).
#   Entries added by callbacks during the wake that are already due are popped
#   by the same loop, so they fire in this wake and are never lost. An
#   exception in a callback goes to loop.call_exception_handler and dispatch
#   continues (SystemExit and KeyboardInterrupt propagate, as in asyncio).
#
# * Arming: call_at() outside a wake arms only if the new entry became the
#   heap top and is earlier than what is armed. During a wake nothing is armed
#   until the end, when we arm once for the new top, or disarm if the heap is
#   empty. cancel() never re-arms: an early timer costs one spurious wake.
#
# Callbacks run in the context (contextvars) of the scheduler's wake-up timer,
# not the context of the call_at() caller.
from time import monotonic_ns as now_ns

__all__ = ["Handle", "Scheduler", "get_scheduler", "now_ns", "SLACK_NS"]

SLACK_NS = 20_000
_SEQ_BITS = 64


class Handle:
    """One scheduled call. Returned by Scheduler.call_at()."""
    __slots__ = ("_key", "_callback", "_arg", "_sched", "_pos", "_deadline", "_cancelled")

    @property
    def deadline_ns(self):
        return self._deadline

    @property
    def cancelled(self):
        return self._cancelled

    def cancel(self):
        """Remove from the heap in O(log n). No-op if already fired/cancelled."""
        s = self._sched
        if s is None:
            return
        self._cancelled = True
        s._take(self._pos)
        self._callback = None
        self._arg = None

    def __repr__(self):
        state = "cancelled" if self._cancelled else ("pending" if self._sched is not None else "done")
        return f"<Handle {state} deadline_ns={self._deadline} callback={self._callback!r}>"


class Scheduler:
    """All token deadlines of one event loop, one wake-up per due time."""
    uses_timerfd = False
    fd = -1

    def __init__(self, loop):
        self.loop = loop
        self._heap = []
        self._seq = 0
        self._armed = 0           # absolute deadline the timer is armed for; 0 = disarmed
        self._timer = None
        self._dispatching = False
        self._closed = False
        self._early = False       # the timer fired before the head was due

    # ---- heap ---------------------------------------------------------

    def _sift_up(self, i):
        heap = self._heap
        h = heap[i]
        key = h._key
        while i > 0:
            p = (i - 1) >> 1
            parent = heap[p]
            if key >= parent._key:
                break
            heap[i] = parent
            parent._pos = i
            i = p
        heap[i] = h
        h._pos = i

    def _sift_down(self, i):
        heap = self._heap
        n = len(heap)
        h = heap[i]
        key = h._key
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            child = heap[c]
            if c + 1 < n:
                right = heap[c + 1]
                if right._key < child._key:
                    c += 1
                    child = right
            if child._key >= key:
                break
            heap[i] = child
            child._pos = i
            i = c
        heap[i] = h
        h._pos = i

    def _take(self, i):
        """Remove entry i; return its Handle, detached (no longer pending)."""
        heap = self._heap
        h = heap[i]
        last = heap.pop()
        if last is not h:
            heap[i] = last
            if i > 0 and last._key < heap[(i - 1) >> 1]._key:
                self._sift_up(i)
            else:
                self._sift_down(i)
        h._sched = None
        h._pos = -1
        return h

    # ---- public API ---------------------------------------------------

    def call_at(self, deadline_ns, callback, arg=None):
        """Call callback(arg, now_ns) once now_ns >= deadline_ns (an int). Returns a Handle."""
        if self._closed:
            raise RuntimeError("Scheduler is closed")
        h = Handle()
        seq = self._seq
        self._seq = seq + 1
        try:
            h._key = (deadline_ns << _SEQ_BITS) | seq     # TypeError for a float, as compiled
        except TypeError:
            raise TypeError(f"deadline must be an int (ns), not {type(deadline_ns).__name__}") from None
        h._deadline = deadline_ns
        h._callback = callback
        h._arg = arg
        h._sched = self
        h._cancelled = False
        heap = self._heap
        h._pos = len(heap)
        heap.append(h)
        self._sift_up(h._pos)
        if h._pos == 0 and not self._dispatching and (self._armed == 0 or deadline_ns < self._armed):
            self._arm(deadline_ns)
        return h

    def __len__(self):
        return len(self._heap)

    @property
    def closed(self):
        return self._closed

    def close(self):
        """Drop every pending entry (they never fire) and release the timer."""
        if self._closed:
            return
        self._closed = True
        self._armed = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        heap, self._heap = self._heap, []
        for h in heap:
            h._sched = None
            h._pos = -1
            h._cancelled = True
            h._callback = None
            h._arg = None

    # ---- wake-up ------------------------------------------------------

    def _arm(self, target):
        if self._timer is not None:
            self._timer.cancel()
        loop = self.loop
        delay = (target - now_ns()) / 1e9
        if self._early:
            # After an early wake, wait at least 1 ms: a ms-rounding loop
            # would turn a sub-ms delay into call_soon, i.e. a busy spin.
            self._early = False
            if delay < 1e-3:
                delay = 1e-3
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)
        self._armed = target

    def _on_timer(self):
        self._timer = None
        self._armed = 0
        self._run()

    def _run(self):
        now = now_ns()
        limit_key = (now + SLACK_NS + 1) << _SEQ_BITS
        heap = self._heap
        take = self._take
        fired = 0
        self._dispatching = True
        try:
            while heap and heap[0]._key < limit_key:
                h = take(0)
                fired += 1
                cb = h._callback
                arg = h._arg
                h._callback = None
                h._arg = None
                try:
                    cb(arg, now)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self.loop.call_exception_handler({
                        "message": f"Exception in scheduler callback {cb!r}",
                        "exception": exc,
                        "handle": h,
                    })
                if self._closed:
                    break
        finally:
            self._dispatching = False
            if fired == 0:
                self._early = True        # the loop's timer fired early (uvloop: ms rounding)
            self._rearm()
        return fired

    def _rearm(self):
        """Arm for the heap top (if not already), or disarm when empty."""
        if self._closed:
            return
        heap = self._heap
        if heap:
            if heap[0]._deadline != self._armed:
                self._arm(heap[0]._deadline)
        elif self._armed != 0:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._armed = 0

    def __repr__(self):
        return f"<Scheduler pending={len(self._heap)} timerfd=False closed={self._closed}>"


_schedulers = {}


def get_scheduler(loop):
    """The Scheduler of `loop`, created on first use.

    Cached by id(loop); schedulers of loops that have since closed are closed
    and dropped whenever a new one is created.
    """
    s = _schedulers.get(id(loop))
    if s is not None and s.loop is loop and not s._closed and not loop.is_closed():
        return s
    for key, old in list(_schedulers.items()):
        if key == id(loop) or old._closed or old.loop.is_closed():
            old.close()
            del _schedulers[key]
    s = Scheduler(loop)
    _schedulers[id(loop)] = s
    return s
