"""The weighted interleave: the one-sample guarantee, the exact EDF rule, stages, errors.

No torch here: ``autoscale_ds.data.blend`` is pure numpy (checked in a subprocess).
"""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autoscale_ds.data._edf as edf_engine
from autoscale_ds.data.blend import (Stage, blend_indices, build_blend, check_weights,
                                     prefix_deviation, quantise_weights)
from autoscale_ds.errors import InputError

Q = 1 << 52


def reference_edf(weights, n):
    """The rule, spelled out with exact integers: at each slot serve, among domains whose
    next sample is allowed (released), the one due first; ties to the lower domain."""
    num = [int(x) for x in quantise_weights(check_weights(weights))]

    def due(d, j):  # first count n with floor(w_d n) >= j + 1
        return -(-((j + 1) * Q) // num[d])

    count, dom, idx = [0] * len(num), [], []
    for slot in range(1, n + 1):
        best = None
        for d, w in enumerate(num):
            j = count[d]
            if w and (j == 0 or due(d, j - 1) <= slot):
                key = (due(d, j), d)
                best = key if best is None or key < best else best
        dom.append(best[1])
        idx.append(count[best[1]])
        count[best[1]] += 1
    return np.array(dom), np.array(idx)


def brute_deviation(domain_index, weights):
    w = check_weights(weights)
    n = np.arange(1, len(domain_index) + 1)
    return max(float(np.abs(np.cumsum(domain_index == d) - n * w[d]).max(initial=0.0))
               for d in range(len(w)))


def small_pieces(monkeypatch):
    """Tiny blocks, chunks and pieces, so short streams cross every internal boundary (the
    compiled kernel's thread pieces too: each one after the first starts from a guess)."""
    for name, value in (("_BLOCK_SLOTS", 1 << 10), ("_SUB_SLOTS", 1 << 8),
                        ("_OVERLAP_SLOTS", 1 << 9), ("_CHUNK_SLOTS", 1 << 7)):
        monkeypatch.setattr(edf_engine, name, value)
    if edf_engine.compiled_kernel() is not None:
        monkeypatch.setattr(edf_engine.compiled_kernel(), "_MIN_PIECE_SLOTS", 50)


def use_engine(monkeypatch, engine: str) -> None:
    """Plan with the compiled kernel ("kernel", skipped without numba) or numpy ("numpy")."""
    if engine == "numpy":
        monkeypatch.setitem(edf_engine._KERNEL, "module", None)
    elif edf_engine.compiled_kernel() is None:
        pytest.skip("numba is not installed: no compiled kernel")
    else:
        monkeypatch.setattr(edf_engine, "KERNEL_MIN_SAMPLES", 0)  # short test streams too


ENGINES = ["kernel", "numpy"]


weights_st = st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(0.0, 1e-3)),
                      min_size=1, max_size=9).filter(lambda w: sum(w) > 0)


def normalised(raw):
    w = np.asarray(raw, dtype=np.float64)
    return (w / w.sum()).tolist()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=weights_st, n=st.integers(0, 3000))
def test_every_prefix_is_within_one_sample(raw, n):
    w = normalised(raw)
    domain, sample = blend_indices(w, n)
    assert domain.dtype == np.int16 and sample.dtype == np.int64 and len(domain) == n
    assert brute_deviation(domain, w) < 1.0 + 1e-9
    for d in range(len(w)):  # each domain's samples come in order, none skipped
        assert np.array_equal(sample[domain == d], np.arange(np.sum(domain == d)))
        if w[d] == 0:
            assert not np.any(domain == d)


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=weights_st, n=st.integers(1, 2500))
def test_equals_the_spelled_out_rule_across_internal_boundaries(engine, raw, n):
    w = normalised(raw)
    with pytest.MonkeyPatch.context() as mp:
        use_engine(mp, engine)
        small_pieces(mp)
        domain, sample = blend_indices(w, n, workers=3)
    ref_domain, ref_sample = reference_edf(w, n)
    assert np.array_equal(domain, ref_domain)
    assert np.array_equal(sample, ref_sample)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("w", [[0.97, 0.01, 0.01, 0.01], [0.9999, 0.0001], [0.5, 0.3, 0.2],
                               [1 / 3] * 3, [0.1] * 10, [0.6, 0.1, 0.1, 0.1, 0.1]])
def test_heavy_and_round_weights_match_the_rule(monkeypatch, engine, w):
    use_engine(monkeypatch, engine)
    small_pieces(monkeypatch)
    domain, sample = blend_indices(w, 3000)
    ref_domain, ref_sample = reference_edf(w, 3000)
    assert np.array_equal(domain, ref_domain) and np.array_equal(sample, ref_sample)


def test_long_scans_switch_to_wide_slack_with_the_same_result(monkeypatch):
    use_engine(monkeypatch, "numpy")
    small_pieces(monkeypatch)
    monkeypatch.setattr(edf_engine, "_SCAN_CAP", 2)  # force the int32 path
    w = [0.95, 0.03, 0.02]
    domain, sample = blend_indices(w, 2000)
    assert np.array_equal(domain, reference_edf(w, 2000)[0])


def test_one_domain_and_zero_weights():
    domain, sample = blend_indices([0.0, 1.0, 0.0], 50)
    assert set(domain.tolist()) == {1} and np.array_equal(sample, np.arange(50))
    domain, _ = blend_indices([0.5, 0.0, 0.5], 40)
    assert not np.any(domain == 1) and np.bincount(domain).tolist() == [20, 0, 20]


@pytest.mark.parametrize("engine", ENGINES)
def test_deterministic_and_independent_of_threads_and_piece_sizes(monkeypatch, engine):
    use_engine(monkeypatch, engine)
    w = np.random.default_rng(0).random(7)
    w = (w / w.sum()).tolist()
    first = blend_indices(w, 200_000, workers=1)
    again = blend_indices(w, 200_000, workers=2)
    small_pieces(monkeypatch)
    pieces = blend_indices(w, 200_000, workers=5)
    for other in (again, pieces):
        assert np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1])


SKEWED_WEIGHTS = [
    [0.97, 0.01, 0.01, 0.01],
    [1 - 3e-7, 1e-7, 1e-7, 1e-7],  # tiny weights: due dates far past the stream's end
    np.random.default_rng(3).dirichlet(np.full(10, 0.3)).tolist(),  # down to ~1e-6
    np.random.default_rng(4).dirichlet(np.full(40, 0.5)).tolist(),  # wider than one scan
    np.random.default_rng(5).random(10).tolist(),
    [0.1] * 10,
    [0.25, 0.0, 0.5, 0.0, 0.25],
]


@pytest.mark.parametrize("w", SKEWED_WEIGHTS, ids=lambda w: f"{len(w)}-min{min(w):.0e}")
def test_kernel_and_numpy_engine_give_the_same_arrays(monkeypatch, w):
    w = normalised(w)
    use_engine(monkeypatch, "kernel")
    with pytest.MonkeyPatch.context() as mp:
        small_pieces(mp)  # many thread pieces, each repaired from a guessed start
        kernel = blend_indices(w, 30_000, workers=7)
    kernel_plain = blend_indices(w, 30_000, workers=1)
    use_engine(monkeypatch, "numpy")
    numpy_path = blend_indices(w, 30_000, workers=2)
    for got in (kernel, kernel_plain):
        assert np.array_equal(got[0], numpy_path[0]) and np.array_equal(got[1], numpy_path[1])
    assert prefix_deviation(kernel[0], w) <= 1.0 + 1e-9


def test_kernel_equals_the_spelled_out_rule_on_tiny_weights(monkeypatch):
    # the numpy engine is slow on these (wide slack): the kernel alone against the rule
    use_engine(monkeypatch, "kernel")
    small_pieces(monkeypatch)
    for w in ([1 - 2e-9, 1e-9, 1e-9], [0.5, 0.5 - 1e-12, 1e-12],
              [0.5, 0.5 - 2e-15, 1e-15, 1e-15]):  # due dates past the kernel's 2**47 cap
        domain, sample = blend_indices(w, 3000, workers=4)
        ref_domain, ref_sample = reference_edf(w, 3000)
        assert np.array_equal(domain, ref_domain) and np.array_equal(sample, ref_sample)


def test_kernel_exact_pick_past_the_due_date_cap():
    # the kernel's packed keys cap due dates at 2**47; a capped minimum is decided here
    kernel = pytest.importorskip("autoscale_ds.data._edf_kernel")
    far = 1 << 50
    due = np.array([far + 5, far + 3, far + 3, 7], dtype=np.int64)
    rel = np.array([1, 1, 1, 99], dtype=np.int64)  # the one due first is not released yet
    assert kernel._first_due(due, rel, 10) == 1  # ties to the lower domain
    assert kernel._first_due(due, rel, 99) == 3


def test_without_numba_the_numpy_engine_plans_and_says_so():
    # numba unimportable, as on an install without the `fast` extra
    code = ("import logging, sys; sys.modules['numba'] = None; "
            "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
            "from autoscale_ds.data import _edf; _edf.KERNEL_MIN_SAMPLES = 0; "
            "from autoscale_ds.data.blend import blend_indices; "
            "d, i = blend_indices([0.5, 0.3, 0.2], 1000); "
            "print(d[:12].tolist(), int(d.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "numpy engine" in out.stderr and "compiled" not in out.stderr
    ref, _ = reference_edf([0.5, 0.3, 0.2], 1000)
    assert out.stdout.strip() == f"{ref[:12].tolist()} {int(ref.sum())}"


def test_a_kernel_that_fails_to_build_falls_back_to_numpy(monkeypatch, caplog):
    kernel = pytest.importorskip("autoscale_ds.data._edf_kernel")

    def broken(*args):
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(kernel, "warm_up", broken)
    monkeypatch.setattr(edf_engine, "_KERNEL", {})  # looked up again, once
    monkeypatch.setattr(edf_engine, "KERNEL_MIN_SAMPLES", 0)
    with caplog.at_level(logging.INFO, logger="autoscale_ds.data._edf"):
        domain, _ = blend_indices([0.5, 0.3, 0.2], 500)
        blend_indices([0.5, 0.5], 10)
    assert np.array_equal(domain, reference_edf([0.5, 0.3, 0.2], 500)[0])
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "no LLVM here" in said[0] and "numpy engine" in said[0]


def test_a_short_stream_never_loads_the_kernel():
    # a proxy run's few thousand samples: the numpy engine plans them faster than numba loads
    code = ("import sys; from autoscale_ds.data.blend import blend_indices; "
            "blend_indices([0.5, 0.3, 0.2], 5000); print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_longer_stream_extends_a_shorter_one():
    w = [0.4, 0.35, 0.15, 0.1]
    short, long = blend_indices(w, 10_000), blend_indices(w, 25_000)
    assert np.array_equal(short[0], long[0][:10_000])


def test_stages_continue_each_domains_counter():
    stages = [(1000, [0.7, 0.2, 0.1]), Stage(500, (0.1, 0.1, 0.8)), (800, [0.0, 0.5, 0.5])]
    plan = build_blend(stages)
    assert plan.num_samples == 2300 and plan.stage_starts() == [0, 1000, 1500]
    for d in range(3):  # each domain's sample numbers run 0, 1, 2, ... across stages
        assert np.array_equal(plan.domain_sample_index[plan.domain_index == d],
                              np.arange(np.sum(plan.domain_index == d)))
    for start, stage in zip(plan.stage_starts(), plan.stages):  # adherence per stage
        part = plan.domain_index[start:start + stage.num_samples]
        assert prefix_deviation(part, stage.weights) <= 1.0 + 1e-9
    # a stage is the one-stage blend of its weights, counters aside
    alone, _ = blend_indices([0.1, 0.1, 0.8], 500)
    assert np.array_equal(plan.domain_index[1000:1500], alone)


def test_prefix_deviation_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m, n = int(rng.integers(1, 6)), int(rng.integers(0, 400))
        w = rng.random(m)
        w /= w.sum()
        dom = rng.integers(0, m, n).astype(np.int16)
        assert prefix_deviation(dom, w, chunk=37) == pytest.approx(brute_deviation(dom, w))


@pytest.mark.parametrize("weights, words", [
    ([0.5, -0.1, 0.6], "-0.1"), ([0.5, float("nan"), 0.5], "nan"),
    ([0.5, float("inf")], "inf"), ([0.3, 0.3], "0.6"), ([], "at least one")])
def test_bad_weights_name_the_value(weights, words):
    with pytest.raises(InputError, match=words):
        blend_indices(weights, 10)


def test_bad_stages_are_input_errors():
    with pytest.raises(InputError, match="stage 1 has 2 weights"):
        build_blend([(5, [0.5, 0.5, 0.0]), (5, [0.5, 0.5])])
    with pytest.raises(InputError, match="integer >= 0"):
        build_blend([(-1, [1.0])])
    with pytest.raises(InputError, match="at least one stage"):
        build_blend([])


def test_blend_module_imports_no_torch():
    code = ("import json, sys; import autoscale_ds.data.blend; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'deepspeed', 'megatron'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def megatron_blend(weights, n):
    helpers = pytest.importorskip("megatron.core.datasets.helpers_cpp")
    w = np.asarray(weights, dtype=np.float64)
    domain, sample = np.zeros(n, np.int16), np.zeros(n, np.int64)
    helpers.build_blending_indices(domain, sample, w, len(w), n, False)
    return domain, sample


def test_megatron_greedy_can_fall_two_samples_behind_where_edf_stays_within_one():
    # Megatron serves argmax_d w_d * max(t, 1) - count_d: the largest deficit, with no
    # look at what is allowed. On skewed weights that is not within one sample, which is
    # why this package does not reproduce it.
    w = [0.0621032582, 0.0010818091, 0.0056149174, 0.9306807160, 0.0001569230, 0.0003623768]
    w = normalised(w)
    theirs, _ = megatron_blend(w, 3000)
    ours, _ = blend_indices(w, 3000)
    assert brute_deviation(theirs, w) > 1.5
    assert brute_deviation(ours, w) <= 1.0 + 1e-9


def test_same_totals_and_no_worse_than_megatron_on_random_weights():
    rng = np.random.default_rng(7)
    for _ in range(10):
        w = normalised(rng.dirichlet(np.full(int(rng.integers(2, 12)), 0.5)))
        n = 20_000
        theirs, their_idx = megatron_blend(w, n)
        ours, _ = blend_indices(w, n)
        assert brute_deviation(ours, w) <= 1.0 + 1e-9
        assert brute_deviation(ours, w) <= brute_deviation(theirs, w) + 1e-9
        # both count each domain to within one sample of n * w at the end
        assert np.all(np.abs(np.bincount(ours, minlength=len(w)) - n * np.array(w)) <= 1 + 1e-9)
        for d in range(len(w)):  # Megatron's sample numbers run in order too
            assert np.array_equal(their_idx[theirs == d], np.arange(np.sum(theirs == d)))
