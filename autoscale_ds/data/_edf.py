"""The engine behind :mod:`autoscale_ds.data.blend`: the earliest-deadline-first stream
built block by block without a Python loop per sample (see blend.py for the rule, its
guarantee and its proof). Private: import from ``autoscale_ds.data.blend``."""

import logging
import mmap
from fractions import Fraction
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np

from ._edf_replay import _inside, _LongScan, _Order, _OutOfData, _settle

logger = logging.getLogger(__name__)

_Q_BITS = 52  # weights are integers over 2**52: exact arithmetic, |w' - w| <= 2**-52
_LIMB = 26  # exact products through 26-bit limbs
_LIMB_MASK = (1 << _LIMB) - 1
MAX_SAMPLES = 1 << 36  # keeps every limb product inside int64
_BLOCK_SLOTS = 1 << 25  # samples planned per block (bounds the extra memory)
_OVERLAP_SLOTS = 1 << 16  # a block may run this far over to end where EDF is settled
_GAP = 8  # early positions closer than this are replayed together
_CHUNK_SLOTS = 1 << 18  # replays run chunk by chunk: small arrays stay in cache
_SUB_SLOTS = 1 << 16  # due-date order built in cache-sized pieces, in parallel
_HUGE_BYTES = 1 << 22  # outputs this large go on transparent huge pages
_SCAN_CAP = 96  # int8 slack (clipped at -127) decides "allowed yet?" exactly this far ahead
_NO_ENTRY = np.iinfo(np.int64).max


class _Quota:
    """Exact floor counts and due dates of the active (positive-weight) domains."""

    def __init__(self, numerators: np.ndarray, horizon: int = MAX_SAMPLES):
        self.num = numerators.astype(np.int64)
        self.num_int = [int(w) for w in self.num]
        self.count = len(numerators)
        self.period = float(1 << _Q_BITS) / self.num  # samples between two of a domain's
        self._hi, self._lo = self.num >> _LIMB, self.num & _LIMB_MASK
        # for powers of two the float period is exact, so no due date needs a check
        self.exact = (self.num & (self.num - 1)) == 0
        # periods within reach of a small fraction a/b (uniform weights: exactly 1/w) make
        # the float test fire on every sample; those get an exact integer formula instead
        self.horizon = horizon
        self.ratio = [_near_fraction(w, horizon) for w in self.num_int]

    def floor_count(self, d, t) -> np.ndarray:
        """``floor(w_d t)`` exactly for arrays, ``t < 2**38``, through 26-bit limbs."""
        t = np.asarray(t, dtype=np.int64)
        t_hi, t_lo = t >> _LIMB, t & _LIMB_MASK
        w_hi, w_lo = self._hi[d], self._lo[d]
        middle = w_hi * t_lo + w_lo * t_hi + ((w_lo * t_lo) >> _LIMB)
        return w_hi * t_hi + (middle >> _LIMB)

    def floor_int(self, d: int, t: int) -> int:
        return (self.num_int[d] * int(t)) >> _Q_BITS

    def total_floor_int(self, t: int) -> int:
        """Samples due by count t, over all domains."""
        return sum((w * int(t)) >> _Q_BITS for w in self.num_int)

    def due(self, d, j) -> np.ndarray:
        """First sample count ``n`` with ``floor(w_d n) >= j + 1``, exactly (capped far away)."""
        d = np.asarray(d)
        j = np.asarray(j, dtype=np.int64)
        x = np.minimum((j + 1.0) * self.period[d], float(MAX_SAMPLES * 2))
        tol = x * 2.0 ** -50  # float error is below x * 2**-51: check near-integers only
        low = np.ceil(x - tol)
        out = np.where(self.exact[d], np.ceil(x), low).astype(np.int64)
        ambiguous = (low != np.ceil(x + tol)) & ~self.exact[d]
        if ambiguous.any():
            at = np.nonzero(ambiguous)
            d_at = np.broadcast_to(d, x.shape)[at]
            j_at = np.broadcast_to(j, x.shape)[at]
            out[at] += self.floor_count(d_at, out[at]) < j_at + 1
        return out

    def release(self, d, j) -> np.ndarray:
        """Earliest 1-based slot at which domain d's j-th sample may be served."""
        j = np.asarray(j, dtype=np.int64)
        return np.where(j > 0, self.due(d, np.maximum(j - 1, 0)), 1)

    def release_int(self, d: int, j: int) -> int:
        return -(-(int(j) << _Q_BITS) // self.num_int[d]) if j > 0 else 1


def _near_fraction(num: int, horizon: int):
    """(a, b, above) with ``2**52 / num = a/b + delta`` and ``horizon * |delta| < 1/b``:
    then ``ceil(k * 2**52 / num)`` for k <= horizon is ``ceil(k a / b)``, plus one when
    b divides ``k a`` and delta > 0. None when no such a/b with b <= 2**20 exists."""
    q = 1 << _Q_BITS
    f = Fraction(q, num).limit_denominator(1 << 20)
    a, b = f.numerator, f.denominator
    gap = q * b - num * a  # delta = gap / (num * b)
    if (horizon + 1) * abs(gap) < num and a * (horizon + 1) < (1 << 62):
        return a, b, gap > 0
    return None


def _alloc(n: int, dtype) -> np.ndarray:
    """A large output array, on transparent huge pages where the kernel allows it: first
    touches of 4 KiB pages can cost as much as building the index."""
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes >= _HUGE_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf = mmap.mmap(-1, nbytes)
            buf.madvise(mmap.MADV_HUGEPAGE)
            return np.frombuffer(buf, dtype=dtype)
        except (OSError, ValueError):
            logger.debug("no huge pages for a %d-byte array; using the heap", nbytes)
    return np.empty(n, dtype=dtype)


class _Scratch:
    """Per-thread buffers for building the due-date order of one piece of the stream."""

    def __init__(self, size: int):
        self.ramp = np.arange(size, dtype=np.int64)
        self.ramp_f = self.ramp.astype(np.float64)
        self.x, self.y = np.empty(size), np.empty(size)
        self.flag = np.empty(size, dtype=bool)
        self.k, self.at = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)
        self.counts, self.free = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)

    def due(self, quota: "_Quota", d: int, first: int, out: np.ndarray) -> None:
        """``out[i] = quota.due(d, first + i)``, exactly: float, then a check near integers."""
        n = len(out)
        if quota.ratio[d] is not None and first + n <= quota.horizon:
            a, b, above = quota.ratio[d]
            t = np.add(self.ramp[:n], first + 1, out=out)
            np.multiply(t, a, out=t)
            if b == 1:
                t += above
                return
            rem = np.remainder(t, b, out=self.k[:n])
            np.add(t, b - 1, out=t)
            np.floor_divide(t, b, out=t)
            if above:
                t += rem == 0
            return
        x, y = self.x[:n], self.y[:n]
        np.add(self.ramp_f[:n], first + 1.0, out=x)
        np.multiply(x, quota.period[d], out=x)
        np.ceil(x, out=y)
        out[:] = y
        if quota.exact[d] or n == 0:
            return
        tol = float(x[-1]) * 2.0 ** -50  # float error is below x * 2**-51
        np.subtract(y, x, out=y)
        np.subtract(y, 0.5, out=y)
        np.abs(y, out=y)
        flag = np.greater(y, 0.5 - tol, out=self.flag[:n])
        if flag.any():
            near = np.flatnonzero(flag)
            low = np.ceil(x[near] - tol).astype(np.int64)
            out[near] = low + (quota.floor_count(d, low) < first + near + 1)


def _due_order(quota: "_Quota", a: int, b: int, lo: int, slack: np.ndarray, out_dom: np.ndarray,
               out_idx: np.ndarray, scratch: _Scratch, base: int = 0) -> None:
    """Write positions [a, b) of Jefferson's order, samples by (due date, domain).

    A sample due at D follows the ``total_floor(D - 1)`` samples due before D and the lower
    domains due at D, so positions come from counts of due dates, with no sort. Positions
    in [a, b) hold samples due in [a + 1, b + m - 1]. ``slack[pos - lo]`` gets the sample's
    release minus its slot (positive: early), clipped to the buffer's integer range.
    """
    m, span = quota.count, b - a + quota.count - 1
    first = [quota.floor_int(d, a) for d in range(m)]
    offsets = []  # due date - (a + 1), per domain
    counts = scratch.counts[:span]
    counts.fill(0)
    for d in range(m):
        k = np.empty(quota.floor_int(d, b + m - 1) - first[d], dtype=np.int64)
        scratch.due(quota, d, first[d], k)
        k -= a + 1
        counts[k] += 1  # a domain has at most one sample due per date
        offsets.append(k)
    free = np.cumsum(counts, out=scratch.free[:span])  # next free position per due date
    np.subtract(free, counts, out=free)
    free += quota.total_floor_int(a)
    lowest = np.iinfo(slack.dtype).min + 1
    for d in range(m):
        k = offsets[d]
        pos = np.take(free, k)
        free[k] = np.add(pos, 1, out=scratch.at[:len(k)])  # lower domains first on a tie
        x0, x1 = (int(v) for v in np.searchsorted(pos, [a, b]))
        at = pos[x0:x1]
        target = at - base if base else at
        out_dom[target] = d
        out_idx[target] = np.add(scratch.ramp[:x1 - x0], first[d] + x0, out=scratch.k[:x1 - x0])
        # sample j is released when sample j - 1 falls due: slack = release - (pos + 1)
        #   = (k[j - 1] + a + 1) - (pos + 1) = k[j - 1] - (pos - a)
        rel = scratch.at[:x1 - x0]
        if x0 > 0:
            np.subtract(k[x0 - 1:x1 - 1], at, out=rel)
        elif x1 > 0:
            rel[0] = quota.release_int(d, first[d]) - 1 - a - at[0]
            np.subtract(k[:x1 - 1], at[1:], out=rel[1:])
        rel += a
        np.maximum(rel, lowest, out=rel)
        inside = int(np.searchsorted(at, lo + len(slack)))
        slack[at[:inside] - lo] = rel[:inside]


def _split_early(slack: np.ndarray, lo: int, first: int, limit: int, stream_end: int):
    """Early positions in [first, limit) (``slack`` starts at ``lo``): isolated ones, which
    a rotation settles, and the rest, which need a replay.

    At position i (slot i+1) the order serves a sample released at slot i+1+s, s > 0. If
    every sample due-ordered in (i, i+s] is allowed one slot earlier, EDF (agreeing with the
    order up to i) serves those one slot early and the waiting sample at slot i+1+s, then
    agrees with the order again: a rotation of positions [i, i+s].
    """
    at = np.flatnonzero(slack[first - lo:limit - lo] > 0) + (first - lo)
    span = slack[at].astype(np.int64)
    simple = at + lo + span < stream_end  # the waiting sample is served inside the stream
    for offset in range(1, int(span.max(initial=0)) + 1):
        inside = np.flatnonzero(offset <= span)
        simple[inside] &= slack[at[inside] + offset] < 0  # allowed one slot earlier
    return at[simple] + lo, span[simple], at[~simple] + lo


def _rotate(dom: np.ndarray, idx: np.ndarray, at: np.ndarray, span: np.ndarray) -> None:
    """Serve each waiting sample at its release; the ones in between move one earlier."""
    held_dom, held_idx = dom[at], idx[at]
    for offset in range(int(span.max(initial=0))):
        moving = at[offset < span] + offset
        dom[moving], idx[moving] = dom[moving + 1], idx[moving + 1]
    dom[at + span], idx[at + span] = held_dom, held_idx


def _edf_stream(numerators: np.ndarray, out_dom: np.ndarray, out_idx: np.ndarray,
                workers: int) -> None:
    """Write one stage: domain (of all domains) and that domain's sample number per slot."""
    n = len(out_dom)
    active = np.flatnonzero(numerators > 0).astype(np.int16)
    if len(active) == 1:
        out_dom[:] = active[0]
        out_idx[:] = np.arange(n)
        return
    kernel = compiled_kernel() if n >= KERNEL_MIN_SAMPLES else None
    if kernel is not None:
        kernel.edf_stream(numerators[active], out_dom, out_idx, workers)
    else:
        _edf_numpy(numerators[active], out_dom, out_idx, workers)
    if len(active) < len(numerators):
        np.take(active, out_dom, out=out_dom)


_KERNEL = {}  # "module": the compiled kernel, or None where it cannot run; looked up once
# Loading the kernel costs 0.6-2 s per process (numba's import and its cache); the numpy
# engine plans a stream this short in less, so short streams (proxy runs, tests) never pay it.
KERNEL_MIN_SAMPLES = 1 << 20


def compiled_kernel():
    """The numba kernel module (imported, compiled or loaded from numba's cache, and run
    once on a small stream), or None where numba is missing or the kernel fails: then the
    numpy engine plans, with the same result. Says once which path is used."""
    if "module" not in _KERNEL:
        _KERNEL["module"] = _load_kernel()
    return _KERNEL["module"]


def _load_kernel():
    try:
        from . import _edf_kernel
    except ImportError as err:  # numba is optional: the `fast` extra
        logger.info("blend index: numpy engine (%s; the `fast` extra brings numba)", err)
        return None
    try:
        _edf_kernel.warm_up()
    except Exception as err:  # noqa: BLE001 -- any compile failure: plan with numpy
        logger.warning("blend index: the numba kernel failed (%s: %s); using the numpy "
                       "engine", type(err).__name__, err)
        return None
    logger.info("blend index: compiled EDF kernel (numba %s)", _edf_kernel.numba.__version__)
    return _edf_kernel


def _edf_numpy(numerators: np.ndarray, out_dom: np.ndarray, out_idx: np.ndarray,
               workers: int) -> None:
    """The vectorised engine: Jefferson's order, then rotations and exact replays."""
    quota = _Quota(numerators, horizon=len(out_dom) + 1024)
    try:
        _edf_blocks(quota, out_dom, out_idx, workers, np.int8)
    except _LongScan:  # extreme weight ratios: slack that never clips, same result
        logger.info("extreme weight ratios: planning again with wide slack")
        _edf_blocks(quota, out_dom, out_idx, workers, np.int32)


def _edf_blocks(quota: "_Quota", out_dom, out_idx, workers: int, slack_type) -> None:
    """Build the due-date order block by block (threads), then settle it chunk by chunk.
    Blocks and chunks end where EDF agrees with the order, so each starts exactly."""
    n = len(out_dom)
    block = min(_BLOCK_SLOTS, n)
    margin = _SCAN_CAP + quota.count + 72  # replays read this far past their last early
    slack = np.empty(block + min(_OVERLAP_SLOTS, n) + margin, dtype=slack_type)
    local = threading.local()

    def scratch() -> _Scratch:
        if not hasattr(local, "scratch"):
            local.scratch = _Scratch(_SUB_SLOTS + quota.count + 64)
        return local.scratch

    def build(piece: Tuple[int, int, int]) -> None:
        _due_order(quota, *piece, slack, out_dom, out_idx, scratch())

    lo, overlap = 0, min(_OVERLAP_SLOTS, n)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while lo < n:
            limit = min(lo + block + overlap, n)  # early positions looked at
            edge = min(limit + margin, n)
            if len(slack) < edge - lo + margin:  # a long replay crossed the overlap
                slack = np.empty(edge - lo + margin, dtype=slack_type)
            tail = (np.zeros(margin, dtype=out_dom.dtype), np.zeros(margin, dtype=np.int64))
            list(pool.map(build, [(a, min(a + _SUB_SLOTS, edge), lo)
                                  for a in range(lo, edge, _SUB_SLOTS)]))
            for a in range(n, n + margin if limit + margin > n else n, _SUB_SLOTS):
                # past the stream's end, for replays that look ahead at its last slots
                _due_order(quota, a, min(a + _SUB_SLOTS, n + margin), lo, slack, *tail,
                           scratch(), base=n)
            # clipped int8 slack still decides "allowed yet?" exactly this close to the slot
            scan_cap = _SCAN_CAP if slack_type == np.int8 else np.iinfo(np.int32).max
            order = _Order(out_dom, out_idx, slack, lo, edge, tail, scan_cap)
            try:
                while lo < min(order.lo + block, n):
                    lo = _settle_chunk(order, lo, min(lo + _CHUNK_SLOTS, n), limit, n)
                overlap = min(_OVERLAP_SLOTS, n)
            except _OutOfData:  # EDF did not agree with the order again in time: look further
                if limit >= n:
                    margin *= 2  # past the stream's end, at its last slots
                else:
                    overlap *= 2


def _settle_chunk(order: _Order, lo: int, target: int, limit: int, n: int) -> int:
    """Replace the due-date order by EDF from ``lo`` (where they agree) to the first position
    at or past ``target`` where they agree again; return that position."""
    look = target
    while True:
        look = min(look + _CHUNK_SLOTS // 4, limit)
        rot_at, rot_span, tangled = _split_early(order.slack, order.lo, lo, look, n)
        starts, last = _clusters(tangled)
        run_start, run_end, slots, dom, idx = _settle(order, starts, last, _NO_ENTRY)
        hi = _block_end(target, look, n, run_start, run_end, rot_at, rot_span)
        if hi is not None:
            break
        if look >= limit:
            raise _OutOfData
    keep = (rot_at < hi) & ~_inside(rot_at, run_start, run_end)
    _rotate(order.dom, order.idx, rot_at[keep], rot_span[keep])
    write = slots < hi
    order.dom[slots[write]], order.idx[slots[write]] = dom[write], idx[write]
    return hi


def _clusters(tangled: np.ndarray):
    """Group early positions closer than ``_GAP`` (one replay each): (start, last early)."""
    if not len(tangled):
        return tangled, tangled
    new = np.concatenate([[True], np.diff(tangled) >= _GAP])
    first = np.flatnonzero(new)
    last = np.concatenate([first[1:], [len(tangled)]]) - 1
    return tangled[first], tangled[last]


def _block_end(target: int, limit: int, n: int, run_start, run_end, rot_at,
               rot_span) -> Optional[int]:
    """First position >= target where EDF agrees with the due-date order: outside every
    run and rotation, so the next block starts exactly."""
    if limit >= n:
        return n
    if target >= n:
        return n
    late = run_end > target
    rot_end = rot_at + rot_span + 1
    late_rot = rot_end > target
    spans = np.concatenate([np.stack([run_start[late], run_end[late]], 1),
                            np.stack([rot_at[late_rot], rot_end[late_rot]], 1)])
    spans = spans[np.argsort(spans[:, 0])]
    hi = target
    for s, e in spans:
        if s < hi < e:
            hi = int(e)
        elif s >= hi:
            break
    return hi if hi < limit else None
