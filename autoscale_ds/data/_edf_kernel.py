"""The EDF rule of :mod:`autoscale_ds.data.blend` as a compiled loop (numba), one slot at a
time, split over threads (private: import from ``autoscale_ds.data.blend``).

Per slot the kernel scans the active domains for the released one due first (ties to the
lower domain): O(m) per slot and no Python per sample. Due dates advance exactly with
integers: ``(j + 1) * 2**52 = q * num + r`` gains ``2**52 // num`` and ``2**52 % num`` per
sample, and sample j is due at ``q + (r > 0)``.

Pieces: the stream is cut into ``_LANES`` pieces per thread; a thread steps its pieces a
slot each in turn, so the CPU overlaps their independent chains (a slot waits on the scan
of the slot before it). Each piece after the first starts from a guessed state, Jefferson's
order at its start (the ``lo`` samples due first), which is EDF's state there in most
cases. The EDF state before a slot is just the per-domain counts, so once the true run
from the previous piece reaches the same counts at the same slot, the rest of the piece is
already right. A sequential pass replays each piece from its true state until the counts
agree (usually within a few slots, at worst the whole piece), so the output does not depend
on the number of workers.

Importing this module needs numba (the ``fast`` extra); where that fails, or the kernel
does not compile, ``_edf.py`` uses its numpy engine instead: both give the same arrays.
"""

import heapq
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import List

import numba
import numpy as np

logger = logging.getLogger(__name__)

_Q_BITS = 52  # weights are integers over 2**52 (see blend.quantise_weights)
_MIN_PIECE_SLOTS = 1 << 20  # smaller pieces cost more in set-up than they save
_LANES = 4  # pieces interleaved per thread: each hides the others' slot-to-slot latency
# (due date, domain) packed into one int64 so a plain min picks the sample: 15 bits of
# domain (int16 indices), due dates capped at 2**47 (a capped minimum is decided exactly)
_DOMAIN_BITS = 15
_DOMAIN_MASK = (1 << _DOMAIN_BITS) - 1
_DUE_CAP = 1 << 47
_NEVER = np.iinfo(np.int64).max


class _State:
    """EDF state before a slot, per active domain: counts, release and due of the next
    sample, and the exact quotient/remainder behind the due date."""

    FIELDS = ("count", "rel", "due", "acc_q", "acc_r")  # the order the kernels take them

    def __init__(self, numerators: List[int], counts: List[int]):
        q = 1 << _Q_BITS
        self.count = np.array(counts, dtype=np.int64)
        self.rel = np.array([-(-(c * q) // w) if c else 1 for w, c in zip(numerators, counts)],
                            dtype=np.int64)
        acc = [divmod((c + 1) * q, w) for w, c in zip(numerators, counts)]
        self.acc_q = np.array([a for a, _ in acc], dtype=np.int64)
        self.acc_r = np.array([r for _, r in acc], dtype=np.int64)
        self.due = self.acc_q + (self.acc_r > 0)


def _jefferson_counts(numerators: List[int], served: int) -> List[int]:
    """Per-domain counts of the first ``served`` samples by (due date, domain)."""
    q = 1 << _Q_BITS
    counts = [(w * served) >> _Q_BITS for w in numerators]  # all due by ``served``
    heap = [(-(-((c + 1) * q) // w), d) for d, (w, c) in enumerate(zip(numerators, counts))]
    heapq.heapify(heap)
    for _ in range(served - sum(counts)):  # fewer than m: the next ones due
        _, d = heapq.heappop(heap)
        counts[d] += 1
        heapq.heappush(heap, (-(-((counts[d] + 1) * q) // numerators[d]), d))
    return counts


@numba.njit(cache=True, nogil=True)
def _first_packed(packed, rel, slot):
    """Smallest packed (due, domain) among the released domains (a vectorised scan)."""
    best = _NEVER
    for d in range(len(rel)):
        # arithmetic, not a branch: whether a domain is released looks random to the
        # branch predictor on skewed weights; all ones (_NEVER) where not released yet
        best = min(best, packed[d] | (((slot - rel[d]) >> 63) & _NEVER))
    return best


@numba.njit(cache=True, nogil=True)
def _first_due(due, rel, slot):
    """The released domain due first, ties to the lower one (exact, any due date)."""
    best, pick = _NEVER, 0
    for d in range(len(due)):
        if rel[d] <= slot and due[d] < best:
            best, pick = due[d], d
    return pick


@numba.njit(cache=True, nogil=True)
def _advance(d, count, rel, due, acc_q, acc_r, num, step_q, step_r):
    """Domain d served one sample: its next sample's release and due date, exactly."""
    count[d] += 1
    rel[d] = due[d]  # the next sample is allowed once this one falls due
    # (j + 1) * 2**52 = q * num + r, one sample on; without a branch (the carry is as good
    # as random on skewed weights)
    r = acc_r[d] + step_r[d]
    carry = r >= num[d]
    acc_r[d] = r - carry * num[d]
    acc_q[d] += step_q[d] + carry
    due[d] = acc_q[d] + (acc_r[d] > 0)


def _packed_keys(due: np.ndarray) -> np.ndarray:
    """(due date, domain) as one int64 per domain (last axis); see ``_DUE_CAP``. Plain
    numpy, outside the compiled loops: fewer numpy functions there compile faster."""
    return (np.minimum(due, _DUE_CAP) << _DOMAIN_BITS) | np.arange(due.shape[-1])


@numba.njit(cache=True, nogil=True)
def _tally(diff, served, replaced):
    """Count ``served`` for the true run and ``replaced`` for the guessed one; returns the
    change in the number of domains whose counts differ."""
    change = (diff[served] == 0) - (diff[served] == -1)
    diff[served] += 1
    change += (diff[replaced] == 0) - (diff[replaced] == 1)
    diff[replaced] -= 1
    return change


@numba.njit(cache=True, nogil=True)
def _serve_lanes(num, step_q, step_r, count, rel, due, acc_q, acc_r, packed, out_dom,
                 out_idx, lo, hi, steps):
    """Serve positions [lo[k], hi[k]) by EDF from state row k (rows updated in place), all
    lanes a slot at a time (``steps``: the longest lane): the lanes are independent, so the
    CPU overlaps them."""
    for step in range(steps):
        for k in range(len(lo)):
            pos = lo[k] + step
            if pos >= hi[k]:
                continue
            slot = pos + 1
            best = _first_packed(packed[k], rel[k], slot)
            pick = best & _DOMAIN_MASK
            if best >> _DOMAIN_BITS >= _DUE_CAP:  # capped due dates: decide exactly
                pick = _first_due(due[k], rel[k], slot)
            out_dom[pos] = pick
            out_idx[pos] = count[k, pick]
            _advance(pick, count[k], rel[k], due[k], acc_q[k], acc_r[k], num, step_q, step_r)
            packed[k, pick] = (min(due[k, pick], _DUE_CAP) << _DOMAIN_BITS) | pick


@numba.njit(cache=True, nogil=True)
def _replay(num, step_q, step_r, count, rel, due, acc_q, acc_r, packed, out_dom, out_idx,
            lo, hi, diff, unequal):
    """EDF over positions [lo, hi) from the true state (updated in place), where the output
    holds a run from a guessed state, ``diff`` is true minus guessed counts and ``unequal``
    its nonzero entries: stop after the first slot where the counts agree and return that
    position (``hi``: they never did)."""
    if unequal == 0:
        return lo
    for pos in range(lo, hi):
        slot = pos + 1
        best = _first_packed(packed, rel, slot)
        pick = best & _DOMAIN_MASK
        if best >> _DOMAIN_BITS >= _DUE_CAP:  # capped due dates: decide exactly
            pick = _first_due(due, rel, slot)
        if out_dom[pos] != pick:
            unequal += _tally(diff, pick, out_dom[pos])
        out_dom[pos] = pick
        out_idx[pos] = count[pick]
        _advance(pick, count, rel, due, acc_q, acc_r, num, step_q, step_r)
        packed[pick] = (min(due[pick], _DUE_CAP) << _DOMAIN_BITS) | pick
        if unequal == 0:
            return pos + 1
    return hi


class _Kernel:
    """One stage's constants and the compiled loop over a range of positions."""

    def __init__(self, numerators: np.ndarray):
        self.num_int = [int(w) for w in numerators]
        self.num = np.array(self.num_int, dtype=np.int64)
        self.step_q = np.array([(1 << _Q_BITS) // w for w in self.num_int], dtype=np.int64)
        self.step_r = np.array([(1 << _Q_BITS) % w for w in self.num_int], dtype=np.int64)

    def state(self, served: int) -> _State:
        """Jefferson's state after ``served`` samples (EDF's, exactly, at 0)."""
        return _State(self.num_int, _jefferson_counts(self.num_int, served))

    def serve(self, states: List[_State], out_dom, out_idx, lo: List[int],
              hi: List[int]) -> None:
        """Run each state over its positions, interleaved in one thread."""
        rows = [np.stack([getattr(s, name) for s in states]) for name in _State.FIELDS]
        lo, hi = np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)
        _serve_lanes(self.num, self.step_q, self.step_r, *rows, _packed_keys(rows[2]),
                     out_dom, out_idx, lo, hi, int(np.max(hi - lo)))
        for k, state in enumerate(states):  # each becomes its piece's end state
            for name, row in zip(_State.FIELDS, rows):
                getattr(state, name)[:] = row[k]

    def replay(self, state: _State, out_dom, out_idx, lo: int, hi: int,
               diff: np.ndarray) -> int:
        return int(_replay(self.num, self.step_q, self.step_r,
                           *(getattr(state, name) for name in _State.FIELDS),
                           _packed_keys(state.due), out_dom, out_idx, lo, hi, diff,
                           np.count_nonzero(diff)))


def edf_stream(numerators: np.ndarray, out_dom: np.ndarray, out_idx: np.ndarray,
               workers: int) -> None:
    """Fill ``out_dom`` (index among ``numerators``, all > 0) and ``out_idx`` by EDF."""
    kernel = _Kernel(numerators)
    n = len(out_dom)
    pieces = max(1, min(workers * _LANES, n // _MIN_PIECE_SLOTS))
    bounds = [n * k // pieces for k in range(pieces + 1)]
    states = [kernel.state(lo) for lo in bounds[:-1]]
    guesses = [s.count.copy() for s in states]

    def run(group) -> None:
        kernel.serve([states[k] for k in group], out_dom, out_idx,
                     [bounds[k] for k in group], [bounds[k + 1] for k in group])

    groups = np.array_split(np.arange(pieces), min(workers, pieces))
    if len(groups) == 1:
        run(groups[0])
    else:
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            list(pool.map(run, groups))
    _repair(kernel, bounds, guesses, states, out_dom, out_idx)


def _repair(kernel: _Kernel, bounds, guesses, ends, out_dom, out_idx) -> None:
    """Replay each guessed piece from the true state until the counts agree."""
    true = ends[0]
    for k in range(1, len(ends)):
        stop = kernel.replay(true, out_dom, out_idx, bounds[k], bounds[k + 1],
                             true.count - guesses[k])
        if stop < bounds[k + 1]:
            true = ends[k]  # agreed: the piece's own run is the true one from here
        if stop > bounds[k] + 4096:
            logger.debug("piece %d: the guessed start agreed with EDF after %d slots",
                         k, stop - bounds[k])


def warm_up() -> None:
    """Compile (or load from numba's cache) both loops on a tiny stream, so a failure shows
    here, where the caller can still choose the numpy engine."""
    kernel = _Kernel(np.array([4, 3, 1], dtype=np.int64) << 49)  # weights 1/2, 3/8, 1/8
    out_dom, out_idx = np.empty(16, dtype=np.int16), np.empty(16, dtype=np.int64)
    kernel.serve([kernel.state(0)], out_dom, out_idx, [0], [16])
    kernel.replay(kernel.state(0), out_dom, out_idx, 0, 16, np.array([1, -1, 0]))
