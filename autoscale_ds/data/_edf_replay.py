"""Exact replays of the EDF rule where the due-date order and EDF disagree (private)."""
from typing import List, Tuple

import numpy as np


class _LongScan(Exception):
    """A replay passed more samples not allowed yet than int8 slack can tell apart."""


class _OutOfData(Exception):
    """A replay ran past the part of the due-date order built so far."""


class _Order:
    """Read access to the due-date order: positions below ``n`` live in the output arrays
    (not yet rotated while lanes run), the few after the stream's end in a small tail."""

    def __init__(self, dom, idx, slack, lo, built, tail, scan_cap: int):
        self.dom, self.idx, self.slack, self.lo, self.n = dom, idx, slack, lo, len(dom)
        self.scan_cap = scan_cap  # slack decides "allowed yet?" exactly this close to the slot
        self.built = built  # positions [lo, built) exist, and those past n in the tail
        self.tail_dom, self.tail_idx = tail

    def _check(self, pos: np.ndarray) -> None:
        if len(pos) and pos.max() >= self.built and ((pos >= self.built) & (
                (pos < self.n) | (pos >= self.n + len(self.tail_dom)))).any():
            raise _OutOfData

    def release(self, pos: np.ndarray) -> np.ndarray:
        """Release (earliest 1-based slot allowed) of the samples at ``pos``."""
        self._check(pos)
        return self.slack[pos - self.lo].astype(np.int64) + pos + 1

    def at(self, pos: np.ndarray):
        """(domain, sample number, release) of the samples at ``pos``."""
        self._check(pos)
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
    the window), and the bit of the position served at each slot, as (slot, window)."""
    g = len(start)
    pos = np.arange(length)[:, None] + start[None, :]
    rel = order.release(pos.ravel())
    # window slot from which each position is allowed, 1-based; length + 1: not inside
    slot = np.clip(rel.reshape(length, g) - start[None, :], 1, length + 1)
    flat = slot * g + np.arange(g)[None, :]  # (first allowed slot, window), flattened
    allowed_by = np.zeros((length + 2, g), dtype=np.uint64)
    cell = allowed_by.ravel()
    for i in range(length):  # a window's positions have distinct cells for each i
        cell[flat[i]] |= np.uint64(1 << i)
    np.bitwise_or.accumulate(allowed_by, axis=0, out=allowed_by)
    served = np.zeros(g, dtype=np.uint64)
    picks = np.empty((length, g), dtype=np.uint64)
    synced = np.zeros(g, dtype=np.int64)
    after = last - start
    one = np.uint64(1)
    for t in range(1, length + 1):
        free = allowed_by[t] & ~served
        pick = free & (~free + one)  # lowest set bit: the allowed position due first
        picks[t - 1] = pick
        served |= pick
        # served exactly the first t positions (a slot with nothing allowed leaves a gap)
        agree = served == np.uint64((1 << t) - 1)
        synced[agree & (synced == 0) & (t > after)] = t
    return synced, picks


class _Lane:
    """EDF replayed from positions where it agrees with the due-date order until it agrees
    again, many at once. State: the served set is every position before ``ptr`` except the
    deferred ones (passed while not allowed yet). A step serves the deferred sample first
    in due order that is allowed now, else the next allowed position."""

    def __init__(self, order: _Order, start: np.ndarray, no_entry: int):
        n = len(start)
        self.order, self.no_entry = order, no_entry  # marks an empty deferral slot
        self.t, self.ptr = start.copy(), start.copy()
        self.q_pos = np.full((n, 4), no_entry, dtype=np.int64)
        self.q_rel = np.full((n, 4), no_entry, dtype=np.int64)
        self.records: List[Tuple[np.ndarray, np.ndarray]] = []

    def run(self, last: np.ndarray) -> Tuple[np.ndarray, ...]:
        """Until each lane, past ``last``, agrees with the order: ends, and the slots,
        positions and lane of every sample served."""
        active = np.arange(len(self.t))
        while len(active):
            self._step(active)
            synced = (self.ptr[active] == self.t[active]) & (self.t[active] > last[active]) \
                & (self.q_pos[active] == self.no_entry).all(1)
            active = active[~synced & (self.t[active] < self.order.n)]  # or the stream ended
        slots, served, lane = (np.concatenate(c) for c in zip(*self.records))
        return self.t, slots, served, lane

    def _step(self, lanes: np.ndarray) -> None:
        slot = self.t[lanes] + 1
        cand = np.where(self.q_rel[lanes] <= slot[:, None], self.q_pos[lanes], self.no_entry)
        col = cand.argmin(1)
        served = cand[np.arange(len(lanes)), col]
        use_q = served != self.no_entry
        self.q_pos[lanes[use_q], col[use_q]] = self.no_entry
        self.q_rel[lanes[use_q], col[use_q]] = self.no_entry
        scan = np.flatnonzero(~use_q)
        for _ in range(self.order.scan_cap):  # pass positions not allowed yet, deferring them
            if not len(scan):
                break
            pos = self.ptr[lanes[scan]]
            rel = self.order.release(pos)
            ok = rel <= slot[scan]
            served[scan[ok]] = pos[ok]
            self.ptr[lanes[scan]] += 1
            scan, pos, rel = scan[~ok], pos[~ok], rel[~ok]
            self._defer(lanes[scan], pos, rel)
        else:
            if len(scan):
                raise _LongScan
        self.records.append((self.t[lanes].copy(), served, lanes))
        self.t[lanes] = slot

    def _defer(self, lanes, pos, rel) -> None:
        if not len(lanes):
            return
        free = self.q_pos[lanes] == self.no_entry
        while not free.any(1).all():
            if self.q_pos.shape[1] >= self.order.scan_cap:
                raise _LongScan
            pad = np.full((len(self.q_pos), self.q_pos.shape[1]), self.no_entry, dtype=np.int64)
            self.q_pos, self.q_rel = np.hstack([self.q_pos, pad]), np.hstack([self.q_rel, pad])
            free = self.q_pos[lanes] == self.no_entry
        col = free.argmax(1)
        self.q_pos[lanes, col], self.q_rel[lanes, col] = pos, rel


def _settle(order: _Order, start: np.ndarray, last: np.ndarray, no_entry: int):
    """EDF from each ``start`` (where it agrees with the order) until it agrees again past
    ``last``. Runs that would overlap are merged and replayed as one. Returns sorted
    disjoint runs (start, end) and (position, domain, sample number) served in them.
    ``no_entry``: a position value no stream reaches, marking empty deferral slots."""
    end, parts = _replay_runs(order, start, last, no_entry)
    run_id = np.arange(len(start))
    while True:
        clash = np.flatnonzero(end[:-1] > start[1:])
        if not len(clash):
            break
        head = np.ones(len(start), dtype=bool)  # fold each clashing run into the one before
        head[clash + 1] = False
        heads = np.flatnonzero(head)
        group = np.cumsum(head) - 1
        redo = np.unique(group[np.concatenate([clash, clash + 1])])
        last = np.maximum.reduceat(last, heads)
        start, end = start[heads], end[heads]
        # drop what the merged runs served, then replay them from their first start
        stale = np.isin(parts[3], run_id[np.isin(group, redo)])
        parts = tuple(p[~stale] for p in parts)
        run_id = run_id[heads]
        new_end, new_parts = _replay_runs(order, start[redo], last[redo], no_entry)
        end[redo] = new_end
        parts = tuple(np.concatenate([p, q]) for p, q in
                      zip(parts, new_parts[:3] + (run_id[redo][new_parts[3]],)))
    return start, end, parts[0], parts[1], parts[2]


def _replay_runs(order: _Order, start: np.ndarray, last: np.ndarray, no_entry: int):
    """Ends of the runs, and (slot, domain, sample number, run) of what they serve."""
    ends = np.zeros(len(start), dtype=np.int64)
    out = []
    for length in (16, 32, 64):  # short windows first: an exact bitmask EDF
        todo = np.flatnonzero((ends == 0) & (last - start < length - 4))
        if len(todo):
            synced, picks = _window_edf(order, start[todo], last[todo], length)
            good = np.flatnonzero(synced > 0)
            done = todo[good]
            ends[done] = start[done] + synced[good]
            step, which = np.nonzero(np.arange(length)[:, None] < synced[good][None, :])
            offset = np.log2(picks[step, good[which]].astype(np.float64)).astype(np.int64)
            dom, idx, _ = order.at(start[done][which] + offset)
            out.append((start[done][which] + step, dom, idx, done[which]))
    long = np.flatnonzero(ends == 0)
    if len(long):
        end, slots, served, lane = _Lane(order, start[long], no_entry).run(last[long])
        dom, idx, _ = order.at(served)
        ends[long] = end
        out.append((slots, dom, idx, long[lane]))
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return ends, (empty, empty, empty, empty)
    return ends, tuple(np.concatenate(c) for c in zip(*out))


def _inside(pos: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Mask of ``pos`` inside one of the disjoint sorted runs [start, end)."""
    if not len(start):
        return np.zeros(len(pos), dtype=bool)
    order = np.argsort(start)
    s, e = start[order], end[order]
    k = np.searchsorted(s, pos, side="right") - 1
    return (k >= 0) & (pos < e[np.maximum(k, 0)])
