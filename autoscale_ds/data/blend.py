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
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

_Q_BITS = 52  # weights are integers over 2**52: exact arithmetic, |w' - w| <= 2**-52
_LIMB = 26  # exact products through 26-bit limbs
_LIMB_MASK = (1 << _LIMB) - 1
MAX_SAMPLES = 1 << 36  # keeps every limb product inside int64
_WINDOW_SLOTS = 1 << 22  # the due-date order is built this many samples at a time
_SEGMENT_SLOTS = 1 << 10  # samples per simulated segment
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
        self.count = len(numerators)
        self.period = float(1 << _Q_BITS) / self.num  # samples between two of a domain's
        self._hi, self._lo = self.num >> _LIMB, self.num & _LIMB_MASK
        # For powers of two the float period is exact, so no due date needs a check.
        self._exact = (self.num & (self.num - 1)) == 0

    def floor_count(self, d: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``floor(w_d t)`` exactly, ``t < MAX_SAMPLES * 4``."""
        t = np.asarray(t, dtype=np.int64)
        t_hi, t_lo = t >> _LIMB, t & _LIMB_MASK
        w_hi, w_lo = self._hi[d], self._lo[d]
        middle = w_hi * t_lo + w_lo * t_hi + ((w_lo * t_lo) >> _LIMB)
        return w_hi * t_hi + (middle >> _LIMB)

    def due(self, d: np.ndarray, j: np.ndarray) -> np.ndarray:
        """First sample count ``n`` with ``floor(w_d n) >= j + 1``, exactly (capped far away)."""
        x = (np.asarray(j, dtype=np.float64) + 1.0) * self.period[d]
        x = np.minimum(x, float(MAX_SAMPLES * 2))
        # float error is below x * 2**-51: only near-integers need the exact test
        tol = x * 2.0 ** -50
        low = np.ceil(x - tol)
        ambiguous = (low != np.ceil(x + tol)) & ~self._exact[d]
        out = np.where(self._exact[d], np.ceil(x), low).astype(np.int64)
        if ambiguous.any():
            idx = np.flatnonzero(ambiguous)
            d_amb = np.broadcast_to(d, x.shape)[idx]
            j_amb = np.broadcast_to(j, x.shape)[idx]
            short = self.floor_count(d_amb, out[idx]) < j_amb + 1
            out[idx] += short
        return out

    def release(self, d: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Earliest sample count at which domain d's j-th sample may be served."""
        j = np.asarray(j, dtype=np.int64)
        return np.where(j > 0, self.due(d, np.maximum(j - 1, 0)), 1)

    def total_floor(self, t: np.ndarray) -> np.ndarray:
        """``sum_d floor(w_d t)`` for each t (samples already due by count t)."""
        t = np.asarray(t, dtype=np.int64)
        return sum(self.floor_count(d, t) for d in range(self.count))


@dataclass
class _Window:
    """Per active domain: samples ``first[d]`` onwards, their due-order positions and dues."""

    first: np.ndarray
    pos_of: List[np.ndarray]
    due_of: List[np.ndarray]
    rel_of: List[np.ndarray]


def _position(quota: _Quota, d: int, due: int) -> int:
    """Due-order position of domain d's sample due at ``due``: all due earlier, ties by index."""
    before = int(quota.total_floor(due - 1))
    ties = sum(int(quota.floor_count(e, due) > quota.floor_count(e, due - 1)) for e in range(d))
    return before + ties


class _Workspace:
    """Buffers reused across windows: fresh multi-MB temporaries cost page faults that
    rival the arithmetic, so the hot loop allocates nothing."""

    def __init__(self, size: int):
        self.ramp = np.arange(size, dtype=np.int64)
        self.ramp_f = self.ramp.astype(np.float64)
        self.x = np.empty(size)
        self.y = np.empty(size)
        self.flag = np.empty(size, dtype=bool)
        self.k = np.empty(size, dtype=np.int64)
        self.at = np.empty(size, dtype=np.int64)
        self.free = np.empty(size, dtype=np.int64)
        self.counts = np.empty(size, dtype=np.int64)

    def due(self, quota: _Quota, d: int, first: int, n: int, out: np.ndarray) -> None:
        """``out[i] = quota.due(d, first + i)`` for i < n, exact (float, then a check)."""
        x, y = self.x[:n], self.y[:n]
        np.add(self.ramp_f[:n], first + 1.0, out=x)
        np.multiply(x, quota.period[d], out=x)
        np.ceil(x, out=y)
        out[:] = y
        if quota._exact[d] or n == 0:
            return
        # float error is below x * 2**-51: only a ceiling this close to x needs the test
        tol = float(x[-1]) * 2.0 ** -50
        np.subtract(y, x, out=y)
        np.subtract(y, 0.5, out=y)
        np.abs(y, out=y)
        flag = np.greater(y, 0.5 - tol, out=self.flag[:n])
        if flag.any():
            near = np.flatnonzero(flag)
            low = np.ceil(x[near] - tol).astype(np.int64)
            out[near] = low + (quota.floor_count(d, low) < first + near + 1)


def _due_order(quota: _Quota, lo: int, hi: int, margin: int, out_dom: np.ndarray,
               out_idx: np.ndarray, ws: _Workspace) -> Tuple[_Window, np.ndarray]:
    """Write Jefferson's order (samples sorted by due date, then domain) for positions
    [lo, hi) into ``out_*[0:hi-lo]``; return per-domain data and the early positions.

    A sample due at D sits after all samples due before D; there are ``total_floor(D - 1)``
    of those, so positions come from counts of due dates, with no sort. "Early" positions
    hold a sample that is not allowed yet there (released after that slot).
    """
    m = quota.count
    lo0 = max(0, lo - margin)  # lanes may start up to ``margin`` samples behind
    last_due = hi + m + margin
    span = last_due - lo0 + 1
    first = np.array([int(quota.floor_count(d, lo0)) for d in range(m)], dtype=np.int64)
    stop = [int(quota.floor_count(d, last_due)) + 2 for d in range(m)]
    dues = []
    counts = ws.counts[:span]
    counts.fill(0)
    for d in range(m):
        # two samples past last_due: a lane's next sample can be one past the due ones
        due = np.empty(stop[d] - first[d], dtype=np.int64)
        ws.due(quota, d, int(first[d]), len(due), due)
        k = np.subtract(due[:-2], lo0, out=ws.k[:len(due) - 2])
        counts[k] += 1  # one due date per domain and date: no collisions within a domain
        dues.append(due)
    # next free position for each due date: all earlier dues, plus lower domains due then
    free = np.cumsum(counts, out=ws.free[:span])
    np.subtract(free, counts, out=free)
    free += int(quota.total_floor(lo0))
    pos_of, rel_of, early = [], [], []
    for d in range(m):
        due = dues[d]
        n = len(due) - 2
        k = np.subtract(due[:-2], lo0, out=ws.k[:n])
        pos = np.empty(len(due), dtype=np.int64)
        np.take(free, k, out=pos[:n])
        free[k] = np.add(pos[:n], 1, out=ws.at[:n])
        pos[n:] = [_position(quota, d, int(x)) for x in due[n:]]
        rel = np.empty(len(due), dtype=np.int64)
        rel[0] = quota.release(d, first[d:d + 1])[0]
        rel[1:] = due[:-1]
        a, b = (int(v) for v in np.searchsorted(pos[:n], [lo, hi]))
        at = np.subtract(pos[a:b], lo, out=ws.at[:b - a])
        out_dom[at] = d
        out_idx[at] = np.add(ws.ramp[:b - a], first[d] + a, out=ws.k[:b - a])
        np.add(at, lo + 1, out=ws.k[:b - a])
        flag = np.greater(rel[a:b], ws.k[:b - a], out=ws.flag[:b - a])
        early.append(pos[a:b][flag])
        pos_of.append(pos)
        rel_of.append(rel)
    early = np.sort(np.concatenate(early))
    return _Window(first, pos_of, dues, rel_of), early


def _release_at(quota: _Quota, out_dom: np.ndarray, out_idx: np.ndarray, where: np.ndarray):
    return quota.release(out_dom[where], out_idx[where])


def _simple_waits(quota: _Quota, lo: int, hi: int, early: np.ndarray, out_dom: np.ndarray,
                  out_idx: np.ndarray, seg_slots: int) -> np.ndarray:
    """Apply isolated early samples in place; return the early positions left to simulate.

    At position i (0-based, 1-based slot i+1) the due-date order serves a sample released
    only at R > i+1. If every sample due-ordered in (i, R-1) is already allowed one slot
    earlier, EDF serves those one slot early and the waiting sample at slot R, then agrees
    with the due-date order again: a rotation.
    """
    if len(early) == 0:
        return early
    at = early - lo
    wait_until = _release_at(quota, out_dom, out_idx, at)  # served at slot R, position R-1
    span = wait_until - early - 1  # samples that move one slot earlier
    # a rotation cut by a segment end would leave that segment's end state mid-way
    simple = ((wait_until - 1 - lo) // seg_slots == at // seg_slots) & (wait_until <= hi)
    for offset in range(1, int(span[simple].max(initial=0)) + 1):
        inside = np.flatnonzero(simple & (offset <= span))
        shifted = at[inside] + offset
        simple[inside] = _release_at(quota, out_dom, out_idx, shifted) <= shifted + lo
    rot, length = at[simple], span[simple]
    held_dom, held_idx = out_dom[rot], out_idx[rot]
    for offset in range(int(length.max(initial=-1)) + 1):
        moving = rot[offset < length] + offset
        out_dom[moving], out_idx[moving] = out_dom[moving + 1], out_idx[moving + 1]
    out_dom[rot + length], out_idx[rot + length] = held_dom, held_idx
    return early[~simple]


class _Lanes:
    """EDF replayed on many segments at once. A lane's state is its per-domain counts.

    Each step serves, among domains whose next sample is allowed, the one due first (its
    due-order position decides, ties included). A lane whose served samples are exactly the
    first ``t`` of the due-date order agrees with it and jumps to the next early sample.
    """

    def __init__(self, win: _Window, start: np.ndarray, end: np.ndarray, base: int):
        n, m = len(start), len(win.first)
        self.win = win
        self.base = base  # output position of the first slot the lanes fill
        self.start = start.astype(np.int64)
        self.end = end.astype(np.int64)
        self.t = self.start.copy()
        self.count = np.zeros((n, m), dtype=np.int64)
        self.head_pos = np.zeros((n, m), dtype=np.int64)
        self.head_rel = np.zeros((n, m), dtype=np.int64)

    def set_counts(self, lanes: np.ndarray, counts: np.ndarray) -> None:
        self.count[lanes] = counts
        for d in range(counts.shape[1]):
            k = counts[:, d] - self.win.first[d]
            self.head_pos[lanes, d] = self.win.pos_of[d][k]
            self.head_rel[lanes, d] = self.win.rel_of[d][k]

    def restart(self, lanes: np.ndarray, counts: np.ndarray) -> None:
        self.t[lanes] = self.start[lanes]
        self.set_counts(lanes, counts)

    def run(self, lanes: np.ndarray, early: np.ndarray, out_dom: np.ndarray,
            out_idx: np.ndarray) -> None:
        """Advance ``lanes`` to their ends, writing what they serve off the due-date order."""
        active = lanes
        while len(active):
            active = self._jump(active, early)
            if len(active):
                self._step(active, out_dom, out_idx)
                active = active[self.t[active] < self.end[active]]

    def _jump(self, lanes: np.ndarray, early: np.ndarray) -> np.ndarray:
        t = self.t[lanes]
        agree = lanes[self.head_pos[lanes].min(1) == t]
        if len(agree):
            k = np.searchsorted(early, self.t[agree])
            nxt = np.where(k < len(early), early[np.minimum(k, max(len(early) - 1, 0))], _NO_ENTRY) \
                if len(early) else np.full(len(agree), _NO_ENTRY)
            target = np.minimum(nxt, self.end[agree])
            moved = agree[target > self.t[agree]]
            target = target[target > self.t[agree]]
            if len(moved):
                self.t[moved] = target
                counts = np.stack([self.win.first[d] + np.searchsorted(self.win.pos_of[d], target)
                                   for d in range(self.count.shape[1])], axis=1)
                self.set_counts(moved, counts)
        return lanes[self.t[lanes] < self.end[lanes]]

    def _step(self, lanes: np.ndarray, out_dom: np.ndarray, out_idx: np.ndarray) -> None:
        slot = self.t[lanes] + 1
        cand = np.where(self.head_rel[lanes] <= slot[:, None], self.head_pos[lanes], _NO_ENTRY)
        pick = cand.argmin(1)
        out = self.t[lanes] - self.base
        out_dom[out] = pick
        j = self.count[lanes, pick]
        out_idx[out] = j
        self.count[lanes, pick] = j + 1
        for d in np.unique(pick):
            sel = pick == d
            k = j[sel] + 1 - self.win.first[d]
            self.head_pos[lanes[sel], d] = self.win.pos_of[d][k]
            self.head_rel[lanes[sel], d] = self.win.rel_of[d][k]
        self.t[lanes] = slot


def _guess_counts(quota: _Quota, starts: np.ndarray) -> np.ndarray:
    """A likely EDF state after ``starts`` samples: the due ones, plus one more sample for
    each of the ``r`` domains due next (r = samples beyond the due ones). Lanes verify it."""
    m = quota.count
    floors = np.stack([quota.floor_count(d, starts) for d in range(m)], axis=1)
    ahead = starts - floors.sum(1)
    next_due = np.stack([quota.due(d, floors[:, d]) for d in range(m)], axis=1)
    order = np.argsort(next_due * m + np.arange(m), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m)[None, :].repeat(len(starts), 0), axis=1)
    return floors + (rank < ahead[:, None])


def _window(quota: _Quota, lo: int, hi: int, carried: np.ndarray, seg_slots: int,
            out_dom: np.ndarray, out_idx: np.ndarray, ws: _Workspace) -> np.ndarray:
    """EDF for positions [lo, hi) written to ``out_*``; returns the counts at ``hi``."""
    margin = quota.count + 2
    win, early = _due_order(quota, lo, hi, margin, out_dom, out_idx, ws)
    early = _simple_waits(quota, lo, hi, early, out_dom, out_idx, seg_slots)
    starts = np.arange(lo, hi, seg_slots, dtype=np.int64)
    ends = np.minimum(starts + seg_slots, hi)
    lanes = _Lanes(win, starts, ends, base=lo)
    start_counts = _guess_counts(quota, starts)
    start_counts[0] = carried  # the first segment continues exactly
    lanes.set_counts(np.arange(len(starts)), start_counts)
    lane_dom = np.full(hi - lo, -1, dtype=np.int64)
    lane_idx = np.zeros(hi - lo, dtype=np.int64)
    todo = np.arange(len(starts))
    while True:
        lanes.run(todo, early, lane_dom, lane_idx)
        # a segment counts once it starts where its predecessor ended; re-run the others
        # from that end: the first of them now starts exactly, so every round fixes one
        todo = np.flatnonzero((start_counts[1:] != lanes.count[:-1]).any(1)) + 1
        if len(todo) == 0:
            break
        logger.debug("samples [%d, %d): re-running %d of %d segments", lo, hi, len(todo),
                     len(starts))
        start_counts[todo] = lanes.count[todo - 1]
        lanes.restart(todo, start_counts[todo])
        for k in todo:
            lane_dom[starts[k] - lo:ends[k] - lo] = -1
    replayed = np.flatnonzero(lane_dom >= 0)
    out_dom[replayed] = lane_dom[replayed]
    out_idx[replayed] = lane_idx[replayed]
    return lanes.count[-1].copy()


def _edf_stream(numerators: np.ndarray, num_samples: int) -> Tuple[np.ndarray, np.ndarray]:
    """Domain and the domain's sample number for each of ``num_samples`` samples."""
    active = np.flatnonzero(numerators > 0)
    domain = np.empty(num_samples, dtype=np.int16)
    sample = np.empty(num_samples, dtype=np.int64)
    if len(active) == 1:
        domain[:] = active[0]
        sample[:] = np.arange(num_samples)
        return domain, sample
    quota = _Quota(numerators[active])
    carried = np.zeros(quota.count, dtype=np.int64)
    window = min(_WINDOW_SLOTS, num_samples)
    ws = _Workspace(window + 4 * quota.count + 16)
    for lo in range(0, num_samples, window):
        hi = min(lo + window, num_samples)
        carried = _window(quota, lo, hi, carried, _SEGMENT_SLOTS, domain[lo:hi], sample[lo:hi], ws)
    if len(active) < len(numerators):
        domain[:] = active[domain]
    return domain, sample


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


def build_blend(stages: Sequence) -> Blend:
    """Plan a stream of consecutive stages, each ``Stage`` or ``(num_samples, weights)``.

    Within a stage the EDF rule keeps every prefix of that stage within one sample of the
    stage's weights; each domain's counter continues from the previous stage, so no sample
    of a domain is repeated or skipped when the weights change.
    """
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
    domain = np.empty(total, dtype=np.int16)
    sample = np.empty(total, dtype=np.int64)
    used = np.zeros(num_domains, dtype=np.int64)
    start = 0
    for stage in parsed:
        stop = start + stage.num_samples
        dom, idx = _edf_stream(quantise_weights(np.asarray(stage.weights)), stage.num_samples)
        domain[start:stop] = dom
        sample[start:stop] = idx + used[dom]
        used += np.bincount(dom, minlength=num_domains)
        start = stop
    return Blend(domain, sample, parsed)


def blend_indices(weights: Sequence[float], num_samples: int) -> Tuple[np.ndarray, np.ndarray]:
    """One-stage blend: ``(domain_index int16, domain_sample_index int64)``."""
    blend = build_blend([(num_samples, weights)])
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
