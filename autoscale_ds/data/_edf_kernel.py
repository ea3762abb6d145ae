"""The EDF rule of :mod:`autoscale_ds.data.blend` as a compiled loop (numba), one slot at a
time, split over threads (private: import from ``autoscale_ds.data.blend``).

Per slot the kernel scans the active domains for the released one due first (ties to the
lower domain): O(m) per slot and no Python per sample. Due dates advance exactly with
integers: ``(j + 1) * 2**52 = q * num + r`` gains ``2**52 // num`` and ``2**52 % num`` per
sample, and sample j is due at ``q + (r > 0)``.

Threads: the stream is cut into one piece per worker. Each piece after the first starts
from a guessed state, Jefferson's order at its start (the ``lo`` samples due first), which
is EDF's state there in most cases. The EDF state before a slot is just the per-domain
counts, so once the true run from the previous piece reaches the same counts at the same
slot, the rest of the piece is already right. A sequential pass replays each piece from its
true state until the counts agree (usually within a few slots, at worst the whole piece), so
the output does not depend on the number of workers.

Importing this module needs numba (the ``fast`` extra); where that fails, or the kernel
does not compile, ``_edf.py`` uses its numpy engine instead: both give the same arrays.
"""

import heapq
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numba
import numpy as np

logger = logging.getLogger(__name__)

_Q_BITS = 52  # weights are integers over 2**52 (see blend.quantise_weights)
_MIN_PIECE_SLOTS = 1 << 20  # below this per worker, threads cost more than they save
# (due date, domain) packed into one int64 so a plain min picks the sample: 15 bits of
# domain (int16 indices), due dates capped at 2**47 (a capped minimum is decided exactly)
_DOMAIN_BITS = 15
_DOMAIN_MASK = (1 << _DOMAIN_BITS) - 1
_DUE_CAP = 1 << 47
_NARROW = 16  # up to this many domains the scan has a fixed length: the compiler vectorises it
_NEVER = np.iinfo(np.int64).max

class _State:
    """EDF state before a slot, per active domain: counts, release and due of the next
    sample, and the exact quotient/remainder behind the due date. Padded to ``width``
    with domains that are never released."""

    def __init__(self, numerators: List[int], counts: List[int], width: int):
        q, pad = 1 << _Q_BITS, width - len(numerators)
        self.count = np.array(counts + [0] * pad, dtype=np.int64)
        self.rel = np.array([-(-(c * q) // w) if c else 1 for w, c in zip(numerators, counts)]
                            + [_NEVER] * pad, dtype=np.int64)
        acc = [divmod((c + 1) * q, w) for w, c in zip(numerators, counts)] + [(0, 0)] * pad
        self.acc_q = np.array([a for a, _ in acc], dtype=np.int64)
        self.acc_r = np.array([r for _, r in acc], dtype=np.int64)
        self.due = self.acc_q + (self.acc_r > 0)
        self.due[len(numerators):] = _NEVER

    def copy(self) -> "_State":
        other = object.__new__(_State)
        for name in ("count", "rel", "acc_q", "acc_r", "due"):
            setattr(other, name, getattr(self, name).copy())
        return other


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


@numba.njit(cache=True, nogil=True, inline="always")
def _first_packed(packed, rel, slot, width):
    """Smallest packed (due, domain) among the released domains; ``width`` is a
    constant at the narrow call site, which lets the compiler vectorise the scan."""
    best = _NEVER
    for d in range(width):
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
def _serve(num, step_q, step_r, count, rel, due, acc_q, acc_r, out_dom, out_idx,
           lo, hi, diff, check):
    """Serve positions [lo, hi) by EDF from the state given (updated in place).

    With ``check``, ``diff`` holds true minus speculative counts and the output already
    holds a speculative run: stop after the first slot where they agree; return that
    position (``hi``: they never did)."""
    width = len(rel)
    packed = (np.minimum(due, _DUE_CAP) << _DOMAIN_BITS) | np.arange(width)
    unequal = 0
    if check:
        for d in range(width):
            unequal += diff[d] != 0
        if unequal == 0:
            return lo
    for pos in range(lo, hi):
        slot = pos + 1
        if width == _NARROW:
            best = _first_packed(packed, rel, slot, _NARROW)
        else:
            best = _first_packed(packed, rel, slot, width)
        pick = best & _DOMAIN_MASK
        if best >> _DOMAIN_BITS >= _DUE_CAP:  # capped due dates: decide exactly
            pick = _first_due(due, rel, slot)
        if check:
            old = out_dom[pos]
            if old != pick:
                unequal += (diff[pick] == 0) - (diff[pick] == -1)
                diff[pick] += 1
                unequal += (diff[old] == 0) - (diff[old] == 1)
                diff[old] -= 1
        out_dom[pos] = pick
        out_idx[pos] = count[pick]
        count[pick] += 1
        rel[pick] = due[pick]  # the next sample is allowed once this one falls due
        # (j + 1) * 2**52 = q * num + r, one sample on; without a branch (the carry
        # is as good as random on skewed weights)
        r = acc_r[pick] + step_r[pick]
        carry = r >= num[pick]
        acc_r[pick] = r - carry * num[pick]
        acc_q[pick] += step_q[pick] + carry
        due[pick] = acc_q[pick] + (acc_r[pick] > 0)
        packed[pick] = (min(due[pick], _DUE_CAP) << _DOMAIN_BITS) | pick
        if check and unequal == 0:
            return pos + 1
    return hi


class _Kernel:
    """One stage's constants and the compiled loop over a range of positions."""

    def __init__(self, numerators: np.ndarray):
        self.num_int = [int(w) for w in numerators]
        m = len(self.num_int)
        self.width = _NARROW if m <= _NARROW else m
        pad = [1] * (self.width - m)  # padded domains are never released
        self.num = np.array(self.num_int + pad, dtype=np.int64)
        self.step_q = np.array([(1 << _Q_BITS) // w for w in self.num_int] + pad, np.int64)
        self.step_r = np.array([(1 << _Q_BITS) % w for w in self.num_int] + pad, np.int64)

    def state(self, served: int) -> _State:
        """Jefferson's state after ``served`` samples (EDF's, exactly, at 0)."""
        return _State(self.num_int, _jefferson_counts(self.num_int, served), self.width)

    def serve(self, state: _State, out_dom, out_idx, lo: int, hi: int,
              diff: Optional[np.ndarray] = None) -> int:
        check = diff is not None
        if diff is None:
            diff = np.zeros(1, dtype=np.int64)
        return int(_serve(self.num, self.step_q, self.step_r, state.count, state.rel,
                          state.due, state.acc_q, state.acc_r, out_dom, out_idx, lo, hi,
                          diff, check))


def edf_stream(numerators: np.ndarray, out_dom: np.ndarray, out_idx: np.ndarray,
               workers: int) -> None:
    """Fill ``out_dom`` (index among ``numerators``, all > 0) and ``out_idx`` by EDF."""
    kernel = _Kernel(numerators)
    n = len(out_dom)
    pieces = max(1, min(workers, n // _MIN_PIECE_SLOTS))
    bounds = [n * k // pieces for k in range(pieces + 1)]
    starts = [kernel.state(lo) for lo in bounds[:-1]]
    guesses = [s.count.copy() for s in starts]  # run in place: each becomes its piece's end
    if pieces == 1:
        kernel.serve(starts[0], out_dom, out_idx, 0, n)
        return
    with ThreadPoolExecutor(max_workers=pieces) as pool:
        list(pool.map(lambda k: kernel.serve(starts[k], out_dom, out_idx, bounds[k],
                                             bounds[k + 1]), range(pieces)))
    _repair(kernel, bounds, guesses, starts, out_dom, out_idx)


def _repair(kernel: _Kernel, bounds, guesses, ends, out_dom, out_idx) -> None:
    """Replay each guessed piece from the true state until the counts agree."""
    true = ends[0]
    for k in range(1, len(ends)):
        diff = true.count - guesses[k]
        stop = kernel.serve(true, out_dom, out_idx, bounds[k], bounds[k + 1], diff)
        if stop < bounds[k + 1]:
            true = ends[k]  # agreed: the piece's own run is the true one from here
        if stop > bounds[k] + 4096:
            logger.debug("piece %d: the guessed start agreed with EDF after %d slots",
                         k, stop - bounds[k])
