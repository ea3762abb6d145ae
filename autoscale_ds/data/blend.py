"""Which domain each sample of a weighted multi-domain stream comes from (pure numpy).

The rule: sample ``n`` (1-based) goes to the domain whose next sample is *due* first. Domain
``d``'s j-th sample (0-based) is due by ``D(d, j)``, the first ``n`` with
``floor(w_d n) >= j + 1``, and may not come before ``D(d, j - 1)``. That window keeps every
prefix within one sample of its target; we serve the earliest due date among the samples
already allowed and break ties by domain index (earliest deadline first, EDF). This is the
Balinski-Young "quota method" of apportionment, or Pfair EDF on one processor.

Guarantee: for every prefix ``n`` and domain ``d``, ``-1 < count_d(n) - n * w'_d < 1``, where
``w'`` is ``w`` renormalised and rounded to multiples of 2**-52 (so ``|w' - w| <= 2**-52``).

Proof. Existence: domain d's samples whose windows lie inside slots ``[x, y]`` number
``max(0, c_d - 1)`` with ``c_d`` its floor crossings in ``[x, y]``; since ``c_d - 1 < w_d (y-x+1)``
and the weights sum to 1, at most ``y - x + 1`` windows fit in ``y - x + 1`` slots: Hall's
condition for intervals, so a schedule meeting every window exists. EDF with integer release
times and unit jobs meets every deadline whenever any schedule does. Served inside its
window, each count stays between ``floor(w n)`` and ``floor(w n) + 1``.

Megatron's ``build_blending_indices`` (serve ``argmax_d w_d max(t, 1) - count_d``) does not
keep this bound: on skewed weights a domain falls up to ~2 samples behind. So our stream is
not Megatron's; the tests compare both deviations against the C++ helper.

Speed, without a Python loop per sample: sort all samples by due date (Jefferson's order,
built in O(n) from counts); EDF equals that order except where a domain's next-but-one
sample comes up before it is allowed. An isolated such sample simply waits until it is
allowed (a vectorised rotation). Tangled cases are replayed exactly by an EDF simulation run
on thousands of segments at once; each segment starts from a guessed state, and a segment
counts only once its start equals the end of its predecessor (re-run otherwise).
"""

import logging
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

_Q_BITS = 52  # weights are integers over 2**52: exact arithmetic, |w' - w| <= 2**-52
_LIMB = 26  # exact products through 26-bit limbs
_LIMB_MASK = (1 << _LIMB) - 1
MAX_SAMPLES = 1 << 36  # keeps every limb product inside int64
_BLOCK_SLOTS = 1 << 25  # samples planned per block (bounds the extra memory)
_OVERLAP_SLOTS = 1 << 16  # a block may run this far over to end where EDF is settled
_GAP = 8  # early positions closer than this are replayed together
_SUB_SLOTS = 1 << 16  # due-date order built in cache-sized pieces, in parallel
_SEGMENT_SLOTS = 1 << 10  # samples per replayed segment
_HUGE_BYTES = 1 << 22
_SCAN_CAP = 96  # pointer lanes trust clipped int8 slack this far past the slot
_WEIGHT_SUM_TOL = 1e-6
_NO_ENTRY = np.iinfo(np.int64).max


def check_weights(weights: Sequence[float], where: str = "weights") -> np.ndarray:
    """Weights as float64 normalised to sum 1; ``InputError`` names any bad value."""
    w = np.asarray(list(weights), dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise InputError(f"{where}: need at least one domain weight, got {list(weights)!r}")
    for d, value in enumerate(w):
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{where}: weight of domain {d} must be finite and >= 0, got {value!r}")
    total = float(w.sum())
    if abs(total - 1.0) > _WEIGHT_SUM_TOL:
        raise InputError(f"{where}: weights must sum to 1 (within {_WEIGHT_SUM_TOL}), got {total!r}")
    if w.size > np.iinfo(np.int16).max:
        raise InputError(f"{where}: at most {np.iinfo(np.int16).max} domains, got {w.size}")
    return w / total


def quantise_weights(weights: np.ndarray) -> np.ndarray:
    """Integer numerators over 2**52 summing exactly to 2**52 (largest remainders round up)."""
    scaled = weights * float(1 << _Q_BITS)
    numerators = np.floor(scaled).astype(np.int64)
    short = (1 << _Q_BITS) - int(numerators.sum())
    order = np.argsort(-(scaled - numerators), kind="stable")
    numerators[order[:short]] += 1
    return numerators


class _Quota:
    """Exact floor counts and due dates of the active (positive-weight) domains."""

    def __init__(self, numerators: np.ndarray):
        self.num = numerators.astype(np.int64)
        self.num_int = [int(w) for w in self.num]
        self.count = len(numerators)
        self.period = float(1 << _Q_BITS) / self.num  # samples between two of a domain's
        self._hi, self._lo = self.num >> _LIMB, self.num & _LIMB_MASK
        # for powers of two the float period is exact, so no due date needs a check
        self.exact = (self.num & (self.num - 1)) == 0

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


def _split_early(slack: np.ndarray, lo: int, limit: int, stream_end: int):
    """Early positions in [lo, limit): isolated ones (a rotation settles them) and the rest.

    At position i (slot i+1) the order serves a sample released at slot i+1+s, s > 0. If
    every sample due-ordered in (i, i+s] is allowed one slot earlier, EDF (agreeing with the
    order up to i) serves those one slot early and the waiting sample at slot i+1+s, then
    agrees with the order again: a rotation of positions [i, i+s].
    """
    at = np.flatnonzero(slack[:limit - lo] > 0)
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


class _LongScan(Exception):
    """A pointer lane met a long run of samples not allowed yet (extreme weight ratios)."""


class _OutOfData(Exception):
    """A replay ran past the part of the due-date order built so far."""


class _Order:
    """Read access to the due-date order: positions below ``n`` live in the output arrays
    (not yet rotated while lanes run), the few after the stream's end in a small tail."""

    def __init__(self, dom, idx, slack, lo, built, tail):
        self.dom, self.idx, self.slack, self.lo, self.n = dom, idx, slack, lo, len(dom)
        self.built = built  # positions [lo, built) exist, and those past n in the tail
        self.tail_dom, self.tail_idx = tail

    def at(self, pos: np.ndarray):
        """(domain, sample number, release) of the samples at ``pos``."""
        if len(pos) and ((pos >= self.built) & ((pos < self.n) | (pos >= self.n + len(self.tail_dom)))).any():
            raise _OutOfData
        inside = pos < self.n
        if inside.all():
            dom, idx = self.dom[pos], self.idx[pos]
        else:
            p = np.minimum(pos, self.n - 1)
            t = np.clip(pos - self.n, 0, len(self.tail_dom) - 1)
            dom = np.where(inside, self.dom[p], self.tail_dom[t])
            idx = np.where(inside, self.idx[p], self.tail_idx[t])
        rel = self.slack[pos - self.lo].astype(np.int64) + pos + 1
        return dom, idx, rel


def _window_edf(order: _Order, start: np.ndarray, last: np.ndarray, length: int):
    """Exact EDF inside windows of ``length <= 64`` positions, each starting where EDF
    agrees with the due-date order. Served sets are bitmasks over the window's positions;
    each slot serves the lowest (first-due) allowed bit. Returns, per window, the first
    slot past position ``last`` at which EDF agrees with the order again (0: none inside
    the window) and the position served at each slot."""
    g = len(start)
    pos = start[:, None] + np.arange(length)[None, :]
    _, _, rel = order.at(pos.ravel())
    # window slot from which each position is allowed, 1-based; length + 1: not inside
    slot = np.clip(rel.reshape(g, length) - start[:, None], 1, length + 1)
    bits = np.uint64(1) << np.arange(length, dtype=np.uint64)
    first = np.zeros((g, length + 2), dtype=np.uint64)
    rows = np.arange(g)
    for i in range(length):
        first[rows, slot[:, i]] |= bits[i]
    allowed_by = np.bitwise_or.accumulate(first, axis=1)
    served = np.zeros(g, dtype=np.uint64)
    picks = np.zeros((g, length), dtype=np.int64)
    synced = np.zeros(g, dtype=np.int64)
    stuck = np.zeros(g, dtype=bool)
    prefix = np.concatenate([np.cumsum(bits), np.zeros(1, dtype=np.uint64)])
    for t in range(1, length + 1):
        free = allowed_by[:, t] & ~served
        pick = free & (~free + np.uint64(1))  # lowest set bit
        stuck |= pick == 0  # EDF would serve a position past the window
        served |= pick
        picks[:, t - 1] = np.log2(np.maximum(pick, 1).astype(np.float64)).astype(np.int64)
        agree = (served == prefix[t - 1]) & ~stuck & (synced == 0) & (t > last - start)
        synced[agree] = t
    return synced, picks + start[:, None]


class _Lane:
    """EDF replayed from positions where it agrees with the due-date order until it agrees
    again, many at once. State: the served set is every position before ``ptr`` except the
    deferred ones (passed while not allowed yet). A step serves the deferred sample first
    in due order that is allowed now, else the next allowed position."""

    def __init__(self, order: _Order, start: np.ndarray):
        n = len(start)
        self.order = order
        self.t, self.ptr = start.copy(), start.copy()
        self.q_pos = np.full((n, 4), _NO_ENTRY, dtype=np.int64)
        self.q_rel = np.full((n, 4), _NO_ENTRY, dtype=np.int64)
        self.records: List[Tuple[np.ndarray, np.ndarray]] = []

    def run(self, last: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Until each lane, past ``last``, agrees with the order: (ends, slots, positions)."""
        active = np.arange(len(self.t))
        while len(active):
            self._step(active)
            synced = (self.ptr[active] == self.t[active]) & (self.t[active] > last[active]) \
                & (self.q_pos[active] == _NO_ENTRY).all(1)
            active = active[~synced & (self.t[active] < self.order.n)]  # or the stream ended
        slots, served = (np.concatenate(c) for c in zip(*self.records))
        return self.t, slots, served

    def _step(self, lanes: np.ndarray) -> None:
        slot = self.t[lanes] + 1
        cand = np.where(self.q_rel[lanes] <= slot[:, None], self.q_pos[lanes], _NO_ENTRY)
        col = cand.argmin(1)
        served = cand[np.arange(len(lanes)), col]
        use_q = served != _NO_ENTRY
        self.q_pos[lanes[use_q], col[use_q]] = _NO_ENTRY
        self.q_rel[lanes[use_q], col[use_q]] = _NO_ENTRY
        scan = np.flatnonzero(~use_q)
        for _ in range(_SCAN_CAP):  # pass over positions not allowed yet, deferring them
            if not len(scan):
                break
            pos = self.ptr[lanes[scan]]
            _, _, rel = self.order.at(pos)
            ok = rel <= slot[scan]
            served[scan[ok]] = pos[ok]
            self.ptr[lanes[scan]] += 1
            scan, pos, rel = scan[~ok], pos[~ok], rel[~ok]
            self._defer(lanes[scan], pos, rel)
        else:
            if len(scan):
                raise _LongScan
        self.records.append((self.t[lanes].copy(), served))
        self.t[lanes] = slot

    def _defer(self, lanes, pos, rel) -> None:
        if not len(lanes):
            return
        free = self.q_pos[lanes] == _NO_ENTRY
        while not free.any(1).all():
            if self.q_pos.shape[1] >= _SCAN_CAP:
                raise _LongScan
            pad = np.full((len(self.q_pos), self.q_pos.shape[1]), _NO_ENTRY, dtype=np.int64)
            self.q_pos, self.q_rel = np.hstack([self.q_pos, pad]), np.hstack([self.q_rel, pad])
            free = self.q_pos[lanes] == _NO_ENTRY
        col = free.argmax(1)
        self.q_pos[lanes, col], self.q_rel[lanes, col] = pos, rel


class _CountLane:
    """The same replay with per-domain counts: robust to long runs of samples not allowed
    yet (extreme weight ratios), at O(domains) per step. Arrays are (domain, lane)."""

    def __init__(self, quota: "_Quota", order: _Order, start: np.ndarray):
        m = quota.count
        self.quota, self.order = quota, order
        self.shift = max(1, (m - 1).bit_length())
        d = np.arange(m, dtype=np.int64)[:, None]
        dom, idx, _ = order.at(start)
        due = quota.due(dom, idx)[None, :]
        before = quota.floor_count(d, due - 1)
        self.count = before + (d < dom[None, :]) * (quota.floor_count(d, due) - before)
        d = np.broadcast_to(d, self.count.shape)
        self.key = (quota.due(d, self.count) << self.shift) | d  # (due date, domain)
        self.rel = quota.release(d, self.count)
        self.served_max = np.where(self.count > 0, (self.rel << self.shift) | d, -1).max(0)
        self.t = start.copy()
        self.records: List[Tuple[np.ndarray, ...]] = []

    def run(self, last: np.ndarray):
        """(ends, slots, domains, sample numbers) served until, past ``last``, agreeing."""
        active = np.arange(len(self.t))
        while len(active):
            self._step(active)
            active = active[((self.key[:, active].min(0) <= self.served_max[active])
                             | (self.t[active] <= last[active])) & (self.t[active] < self.order.n)]
        slots, dom, idx = (np.concatenate(c) for c in zip(*self.records))
        return self.t, slots, dom, idx

    def _step(self, lanes: np.ndarray) -> None:
        slot = self.t[lanes] + 1
        best = np.where(self.rel[:, lanes] <= slot, self.key[:, lanes], _NO_ENTRY).min(0)
        pick = best & ((1 << self.shift) - 1)
        flat = pick * self.count.shape[1] + lanes
        j = self.count.ravel()[flat]
        self.records.append((self.t[lanes].copy(), pick, j))
        self.count.ravel()[flat] = j + 1
        self.rel.ravel()[flat] = best >> self.shift
        self.key.ravel()[flat] = (self.quota.due(pick, j + 1) << self.shift) | pick
        self.served_max[lanes] = np.maximum(self.served_max[lanes], best)
        self.t[lanes] = slot


def _settle(quota: "_Quota", order: _Order, start: np.ndarray, last: np.ndarray):
    """EDF from each ``start`` (where it agrees with the order) until it agrees again past
    ``last``. Runs that would overlap are merged and replayed as one. Returns sorted
    disjoint runs (start, end) and (position, domain, sample number) served in them."""
    while True:
        end, served = _replay_runs(quota, order, start, last)
        clash = np.flatnonzero(end[:-1] > start[1:])
        if not len(clash):
            break
        merged = np.ones(len(start), dtype=bool)  # fold each clashing run into the one before
        merged[clash + 1] = False
        last = np.maximum.reduceat(last, np.flatnonzero(merged))
        start = start[merged]
    pos, dom, idx = (np.concatenate(c) for c in zip(*served)) if served else \
        (np.zeros(0, np.int64),) * 3
    return start, end, pos, dom, idx


def _replay_runs(quota: "_Quota", order: _Order, start: np.ndarray, last: np.ndarray):
    ends = np.zeros(len(start), dtype=np.int64)
    out = []
    for length in (16, 32, 64):  # short windows first: an exact bitmask EDF
        todo = np.flatnonzero((ends == 0) & (last - start < length - 4))
        if len(todo):
            synced, picks = _window_edf(order, start[todo], last[todo], length)
            good = synced > 0
            done = todo[good]
            ends[done] = start[done] + synced[good]
            used = np.arange(length)[None, :] < synced[good][:, None]
            slots = (start[done, None] + np.arange(length)[None, :])[used]
            dom, idx, _ = order.at(picks[good][used])
            out.append((slots, dom, idx))
    long = np.flatnonzero(ends == 0)
    if len(long):
        try:
            end, slots, served = _Lane(order, start[long]).run(last[long])
            dom, idx, _ = order.at(served)
        except _LongScan:
            logger.info("extreme weight ratios: replaying EDF per domain")
            end, slots, dom, idx = _CountLane(quota, order, start[long]).run(last[long])
        ends[long] = end
        out.append((slots, dom, idx))
    return ends, out


def _inside(pos: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Mask of ``pos`` inside one of the disjoint sorted runs [start, end)."""
    if not len(start):
        return np.zeros(len(pos), dtype=bool)
    order = np.argsort(start)
    s, e = start[order], end[order]
    k = np.searchsorted(s, pos, side="right") - 1
    return (k >= 0) & (pos < e[np.maximum(k, 0)])


def _edf_stream(numerators: np.ndarray, out_dom: np.ndarray, out_idx: np.ndarray,
                workers: int) -> None:
    """Write one stage: domain (of all domains) and that domain's sample number per slot."""
    n = len(out_dom)
    active = np.flatnonzero(numerators > 0).astype(np.int16)
    if len(active) == 1:
        out_dom[:] = active[0]
        out_idx[:] = np.arange(n)
        return
    quota = _Quota(numerators[active])
    block = min(_BLOCK_SLOTS, n)
    overlap = min(_OVERLAP_SLOTS, n)  # room to find a block end where EDF is settled
    margin = _SCAN_CAP + quota.count + 72  # replays read this far past their last early
    slack = np.empty(block + overlap + margin, dtype=np.int8 if quota.count < 100 else np.int16)
    tail = (np.zeros(margin, dtype=out_dom.dtype), np.zeros(margin, dtype=np.int64))
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
                slack = np.empty(edge - lo + margin, dtype=slack.dtype)
            list(pool.map(build, [(a, min(a + _SUB_SLOTS, edge), lo)
                                  for a in range(lo, edge, _SUB_SLOTS)]))
            if limit + margin > n:  # past the stream's end, for replays that look ahead
                _due_order(quota, n, n + margin, lo, slack, *tail, scratch(), base=n)
            order = _Order(out_dom, out_idx, slack, lo, edge, tail)
            rot_at, rot_span, tangled = _split_early(slack, lo, limit, n)
            starts, last = _clusters(tangled)
            try:
                run_start, run_end, slots, dom, idx = _settle(quota, order, starts, last)
                hi = _block_end(min(lo + block, n), limit, n, run_start, run_end, rot_at,
                                rot_span)
            except _OutOfData:
                hi = None
            if hi is None:  # EDF never agreed with the order in the overlap: look further
                overlap *= 2
                continue
            keep = (rot_at < hi) & ~_inside(rot_at, run_start, run_end)
            _rotate(out_dom, out_idx, rot_at[keep], rot_span[keep])
            write = slots < hi
            out_dom[slots[write]], out_idx[slots[write]] = dom[write], idx[write]
            lo, overlap = hi, min(_OVERLAP_SLOTS, n)
    if len(active) < len(numerators):
        np.take(active, out_dom, out=out_dom)


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
    spans = np.concatenate([np.stack([run_start, run_end], 1),
                            np.stack([rot_at, rot_at + rot_span + 1], 1)])
    spans = spans[np.argsort(spans[:, 0])]
    hi = target
    for s, e in spans[spans[:, 1] > target]:
        if s < hi < e:
            hi = int(e)
        elif s >= hi:
            break
    return hi if hi < limit else None


@dataclass(frozen=True)
class Stage:
    """``num_samples`` consecutive samples drawn with ``weights`` (one per domain)."""

    num_samples: int
    weights: Tuple[float, ...]


@dataclass
class Blend:
    """The planned stream: sample t comes from ``domain_index[t]``, as that domain's
    ``domain_sample_index[t]``-th sample (counters run on across stages)."""

    domain_index: np.ndarray
    domain_sample_index: np.ndarray
    stages: Tuple[Stage, ...]

    @property
    def num_samples(self) -> int:
        return len(self.domain_index)

    @property
    def num_domains(self) -> int:
        return len(self.stages[0].weights)

    def stage_starts(self) -> List[int]:
        return list(np.cumsum([0] + [s.num_samples for s in self.stages[:-1]]))


def _as_stage(stage, k: int) -> Stage:
    if isinstance(stage, Stage):
        num, weights = stage.num_samples, stage.weights
    else:
        try:
            num, weights = stage
        except (TypeError, ValueError):
            raise InputError(f"stage {k}: expected (num_samples, weights), got {stage!r}") from None
    if not isinstance(num, (int, np.integer)) or num < 0:
        raise InputError(f"stage {k}: number of samples must be an integer >= 0, got {num!r}")
    return Stage(int(num), tuple(float(w) for w in check_weights(weights, f"stage {k}")))


def default_workers() -> int:
    """Threads for planning: numpy releases the GIL in the array work, so cores add up."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


def build_blend(stages: Sequence, workers: Optional[int] = None) -> Blend:
    """Plan a stream of consecutive stages, each ``Stage`` or ``(num_samples, weights)``.

    Within a stage the EDF rule keeps every prefix of that stage within one sample of the
    stage's weights; each domain's counter continues from the previous stage, so no sample
    of a domain is repeated or skipped when the weights change.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    parsed = tuple(_as_stage(s, k) for k, s in enumerate(stages))
    if not parsed:
        raise InputError("need at least one stage")
    num_domains = len(parsed[0].weights)
    for k, stage in enumerate(parsed):
        if len(stage.weights) != num_domains:
            raise InputError(f"stage {k} has {len(stage.weights)} weights, stage 0 has {num_domains}")
    total = sum(s.num_samples for s in parsed)
    if total > MAX_SAMPLES:
        raise InputError(f"at most {MAX_SAMPLES:,} samples per blend, got {total:,}")
    domain = _alloc(total, np.int16)
    sample = _alloc(total, np.int64)
    used = np.zeros(num_domains, dtype=np.int64)
    start = 0
    for k, stage in enumerate(parsed):
        stop = start + stage.num_samples
        if stage.num_samples:
            dom, idx = domain[start:stop], sample[start:stop]
            _edf_stream(quantise_weights(np.asarray(stage.weights)), dom, idx, workers)
            if used.any():  # counters run on from the earlier stages
                idx += used[dom]
            if k + 1 < len(parsed):
                used += np.bincount(dom, minlength=num_domains)
        start = stop
    return Blend(domain, sample, parsed)


def blend_indices(weights: Sequence[float], num_samples: int,
                  workers: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One-stage blend: ``(domain_index int16, domain_sample_index int64)``."""
    blend = build_blend([(num_samples, weights)], workers)
    return blend.domain_index, blend.domain_sample_index


def prefix_deviation(domain_index: np.ndarray, weights: Sequence[float],
                     chunk: int = 1 << 22) -> float:
    """``max over n, d of |count_d(n) - n * w_d|`` over all prefixes, in bounded memory.

    Deviations peak just after a domain's sample (upward) or just before it (downward), so
    only the positions of each domain's samples matter: a stable sort by domain per chunk.
    """
    w = check_weights(weights)
    m = len(w)
    counts = np.zeros(m, dtype=np.int64)
    worst = 0.0
    for lo in range(0, len(domain_index), chunk):
        block = np.asarray(domain_index[lo:lo + chunk])
        if block.size and (block.min() < 0 or block.max() >= m):
            raise InputError(f"domain index outside [0, {m}) in samples [{lo}, {lo + len(block)})")
        order = np.argsort(block, kind="stable")
        per_domain = np.bincount(block, minlength=m)
        first = np.concatenate([[0], np.cumsum(per_domain)[:-1]])
        dom = block[order].astype(np.int64)
        rank = np.arange(len(order)) - first[dom] + counts[dom]  # samples of d before this one
        n_after = (order + lo + 1).astype(np.float64)  # prefix length including this sample
        up = (rank + 1) - n_after * w[dom]
        down = n_after - 1.0
        down = down * w[dom] - rank
        worst = max(worst, float(up.max(initial=0.0)), float(down.max(initial=0.0)))
        counts += per_domain
    final = counts - len(domain_index) * w
    return max(worst, float(np.abs(final).max(initial=0.0)))
