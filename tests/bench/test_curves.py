"""Seed-averaged validation curves and the speed-up figure of the quality benchmark."""

import math

import numpy as np
import pytest

from curves import run_curve, seed_band, speedup, tokens_to_reach
from autoscale_ds.errors import InputError


def _row(steps, ppl_a, ppl_b):
    return {"id": "r", "evals": [{"step": s, "perplexity": {"a": a, "b": b}, "loss": {"a": math.log(a), "b": math.log(b)}}
                                 for s, a, b in zip(steps, ppl_a, ppl_b)]}


def test_run_curve_averages_domains_and_converts_steps_to_tokens():
    curve = run_curve(_row([10, 20], [100.0, 50.0], [300.0, 150.0]), tokens_per_step=512)
    assert curve.tokens.tolist() == [5120.0, 10240.0]
    assert curve.average.tolist() == [200.0, 100.0]
    assert curve.per_domain["b"].tolist() == [300.0, 150.0]
    loss = run_curve(_row([10], [math.e], [math.e ** 3]), tokens_per_step=1, metric="loss")
    assert loss.average.tolist() == pytest.approx([2.0])


def test_a_resumed_run_that_evaluated_a_step_twice_counts_it_once():
    row = _row([10, 20, 20, 30], [9.0, 8.0, 7.0, 6.0], [9.0, 8.0, 7.0, 6.0])
    assert run_curve(row, 1).average.tolist() == [9.0, 7.0, 6.0]


def test_run_without_history_is_a_clear_error():
    with pytest.raises(InputError, match="eval_interval_steps"):
        run_curve({"id": "x", "evals": []}, 1)


def test_seed_band_mean_and_spread():
    curves = [run_curve(_row([1, 2], [a, a / 2], [a, a / 2]), 100) for a in (10.0, 20.0, 30.0)]
    band = seed_band(curves)
    assert band.mean.tolist() == [20.0, 10.0]
    assert band.low.tolist() == [10.0, 5.0] and band.high.tolist() == [30.0, 15.0]
    assert band.std[0] == pytest.approx(np.std([10, 20, 30]))
    assert band.seeds == 3


def test_seed_band_refuses_mismatched_grids():
    with pytest.raises(InputError, match="different token counts"):
        seed_band([run_curve(_row([1, 2], [5, 4], [5, 4]), 10), run_curve(_row([1, 3], [5, 4], [5, 4]), 10)])


def test_tokens_to_reach_interpolates_the_first_crossing():
    tokens = np.array([100.0, 200.0, 300.0, 400.0])
    values = np.array([10.0, 6.0, 8.0, 2.0])  # dips below 7 first between 100 and 200
    assert tokens_to_reach(tokens, values, 7.0) == pytest.approx(175.0)
    assert tokens_to_reach(tokens, values, 12.0) == 100.0  # already there at the first eval
    assert tokens_to_reach(tokens, values, 1.0) is None


def test_speedup_matches_the_papers_definition():
    grid = [1, 2, 3, 4]
    baseline = seed_band([run_curve(_row(grid, [8, 6, 5, 4], [8, 6, 5, 4]), 250)])
    faster = seed_band([run_curve(_row(grid, [7, 5, 4, 3], [7, 5, 4, 3]), 250)])
    # The faster curve reaches the baseline's final 4.0 at step 3 = 750 of 1000 tokens.
    assert speedup(faster, baseline) == pytest.approx(0.25)
    assert speedup(baseline, baseline) == pytest.approx(0.0)
    assert speedup(baseline, faster) is None
