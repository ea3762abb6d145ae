"""DoReMi's weight update (pure numpy): checked against a hand computation, the smoothing floor,
exact checkpoint round-trips, input errors, and the trajectory file reader."""

import json
import math

import numpy as np
import pytest

from autoscale_ds.errors import InputError
from autoscale_ds.method.doremi import (DoReMiWeights, read_trajectory, running_average,
                                        settings_problems, trajectory_line, with_defaults)


def test_update_matches_a_hand_computation():
    state = DoReMiWeights(["a", "b"], [0.5, 0.5])
    new = state.update([1.0, 0.0], step_size=1.0, smoothing=0.001)
    # alpha' = (0.5 e, 0.5); normalised (e, 1) / (1 + e); then 0.999 x that + 0.001 / 2
    expected_a = 0.999 * math.e / (1 + math.e) + 0.0005
    assert new == pytest.approx([expected_a, 1 - expected_a], rel=1e-14)
    # a second step, three domains, another step size: alpha' = alpha exp(0.5 lambda)
    state = DoReMiWeights(["a", "b", "c"], [0.2, 0.3, 0.5])
    state.update([2.0, 0.0, 1.0], step_size=0.5, smoothing=0.0)
    raw = np.array([0.2 * math.e, 0.3, 0.5 * math.exp(0.5)])
    assert state.weights == pytest.approx(raw / raw.sum(), rel=1e-14)
    second = state.update([0.0, 4.0, 0.0], step_size=0.5, smoothing=0.01)
    raw2 = (raw / raw.sum()) * np.exp(0.5 * np.array([0.0, 4.0, 0.0]))
    assert second == pytest.approx(0.99 * raw2 / raw2.sum() + 0.01 / 3, rel=1e-14)
    assert state.steps == 2
    average = state.average_weights()
    assert list(average.values()) == pytest.approx((raw / raw.sum() + second) / 2, rel=1e-14)


def test_smoothing_keeps_every_weight_at_least_c_over_k():
    rng = np.random.default_rng(0)
    smoothing, domains = 1e-3, ["a", "b", "c", "d"]
    state = DoReMiWeights(domains, [0.25] * 4)
    for _ in range(200):  # one domain's excess dwarfs the others': theirs fall to the floor
        weights = state.update(np.concatenate([[50.0], rng.uniform(0, 0.1, 3)]), 1.0, smoothing)
        assert weights.min() >= smoothing / len(domains) * (1 - 1e-12)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert state.weights[1:] == pytest.approx([smoothing / 4] * 3, rel=1e-6)


def test_huge_excess_losses_do_not_overflow():
    state = DoReMiWeights(["a", "b"], [0.5, 0.5])
    weights = state.update([1e5, 9e4], step_size=10.0, smoothing=0.0)
    assert np.isfinite(weights).all() and weights[0] == pytest.approx(1.0)


def test_no_excess_anywhere_only_smooths():
    """A step where every domain is absent (lambda = 0) moves the weights toward uniform by c."""
    state = DoReMiWeights(["a", "b"], [0.9, 0.1])
    assert state.update([0.0, 0.0], 1.0, 0.1) == pytest.approx([0.9 * 0.9 + 0.05, 0.1 * 0.9 + 0.05])


def test_average_before_any_update_is_the_initial_weights():
    assert DoReMiWeights(["a", "b"], [0.3, 0.7]).average_weights() == {"a": 0.3, "b": 0.7}


def test_state_round_trips_exactly():
    rng = np.random.default_rng(1)
    state = DoReMiWeights(["x", "y", "z"], [0.2, 0.3, 0.5])
    for _ in range(5):
        state.update(rng.uniform(0, 3, 3), 1.0, 1e-3)
    copy = DoReMiWeights.from_dict(json.loads(json.dumps(state.to_dict())))
    for _ in range(5):
        excess = rng.uniform(0, 3, 3)
        assert state.update(excess, 1.0, 1e-3).tobytes() == copy.update(excess, 1.0, 1e-3).tobytes()
    assert json.dumps(state.average_weights()) == json.dumps(copy.average_weights())
    with pytest.raises(ValueError, match="missing"):
        DoReMiWeights.from_dict({"domains": ["x"]})


@pytest.mark.parametrize("excess, message", [
    ([0.1, float("nan")], "excess loss of domain 'b' is nan"),
    ([float("inf"), 0.0], "excess loss of domain 'a' is inf"),
    ([-0.5, 0.0], "domain 'a' is -0.5"),
    ([0.1], "one excess loss per domain"),
])
def test_bad_excess_losses_are_clear_errors(excess, message):
    state = DoReMiWeights(["a", "b"], [0.5, 0.5])
    with pytest.raises(ValueError, match=message):
        state.update(excess)
    assert state.steps == 0  # nothing changed


def test_bad_weights_and_settings_are_clear_errors():
    with pytest.raises(ValueError, match="must sum to 1"):
        DoReMiWeights(["a", "b"], [0.5, 0.6])
    with pytest.raises(ValueError, match=r"weights of \['b'\]"):
        DoReMiWeights(["a", "b"], [1.5, -0.5])
    with pytest.raises(ValueError, match="distinct"):
        DoReMiWeights(["a", "a"], [0.5, 0.5])
    state = DoReMiWeights(["a", "b"], [0.5, 0.5])
    with pytest.raises(ValueError, match="step_size"):
        state.update([0.0, 0.0], step_size=0)
    with pytest.raises(ValueError, match="smoothing"):
        state.update([0.0, 0.0], smoothing=1.5)


def test_config_settings_checks_and_defaults():
    assert settings_problems({"reference_checkpoint_dir": "r"}) == []
    problems = settings_problems({"step_size": "1", "smoothing": -1, "x": 1})
    assert len(problems) == 4 and "unknown key(s) ['x']" in problems[0]
    assert settings_problems([1]) and "doremi must be" in settings_problems([1])[0]
    assert with_defaults({"reference_checkpoint_dir": "r", "step_size": 2}) == \
        {"reference_checkpoint_dir": "r", "step_size": 2.0, "smoothing": 0.001}


def test_trajectory_file_reads_back(tmp_path):
    path = tmp_path / "doremi_weights.jsonl"
    path.write_text(trajectory_line(1, {"a": 0.25, "b": 0.75}, {"a": 0.0, "b": 1.5})
                    + trajectory_line(2, {"a": 0.5, "b": 0.5}))
    steps, weights = read_trajectory(path)
    assert steps == [1, 2] and weights == {"a": [0.25, 0.5], "b": [0.75, 0.5]}
    assert running_average(weights)["a"].tolist() == [0.25, 0.375]
    path.write_text(trajectory_line(1, {"a": 1.0}) + '{"step": 2, "weights"\n')
    with pytest.raises(InputError, match="line 2"):
        read_trajectory(path)
    path.write_text(trajectory_line(1, {"a": 1.0}) + trajectory_line(2, {"b": 1.0}))
    with pytest.raises(InputError, match="line 2: domains"):
        read_trajectory(path)
    with pytest.raises(InputError, match="not found"):
        read_trajectory(tmp_path / "missing.jsonl")
