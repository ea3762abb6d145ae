import math

import numpy as np
import pytest

from autoscale_ds.errors import InputError
from autoscale_ds.formats.schemas import Mixture
from autoscale_ds.method.predict import PredictGuards, predict, project_capped_simplex

SMALL = Mixture.from_tokens({"web": 1.0e5, "code": 2.0e5, "books": 7.0e5}, "ddo")
LARGE = Mixture.from_tokens({"web": 3.0e5, "code": 5.0e5, "books": 12.0e5}, "ddo")


@pytest.mark.parametrize("steps, mixture", [(0, LARGE)])
def test_steps_zero_returns_the_largest_input(steps, mixture):
    result = predict([SMALL, LARGE], steps=steps)
    assert result.tokens == pytest.approx(mixture.tokens, rel=1e-12)


def test_target_equal_to_an_input_budget_returns_that_input():
    for mixture, s in ((SMALL, 0.0), (LARGE, 1.0)):
        result = predict([SMALL, LARGE], target_tokens=mixture.total_tokens)
        assert result.s == pytest.approx(s, abs=1e-9)
        assert result.tokens == pytest.approx(mixture.tokens, rel=1e-9)


def test_one_step_is_the_papers_next_scale_rule():
    result = predict([LARGE, SMALL], steps=1)  # input order must not matter
    expected = {d: LARGE.tokens[d] ** 2 / SMALL.tokens[d] for d in SMALL.tokens}
    assert result.s == 2.0
    assert result.tokens == pytest.approx(expected, rel=1e-12)
    assert result.total_tokens == pytest.approx(sum(expected.values()), rel=1e-12)


@pytest.mark.parametrize("target", [1.5e6, 2.5e6, 1e8, 1e10])
def test_requested_total_is_hit_exactly(target):
    result = predict([SMALL, LARGE], target_tokens=target)
    assert math.fsum(result.tokens.values()) == pytest.approx(target, rel=1e-12)
    # Every domain follows its own log-linear trend at the shared coordinate s.
    for d in SMALL.tokens:
        expected = SMALL.tokens[d] * (LARGE.tokens[d] / SMALL.tokens[d]) ** result.s
        assert result.tokens[d] == pytest.approx(expected, rel=1e-9)


def test_three_budgets_on_one_trend_fit_exactly_and_report_coordinates():
    third = Mixture.from_tokens({d: LARGE.tokens[d] ** 2 / SMALL.tokens[d] for d in SMALL.tokens}, "ddo")
    result = predict([SMALL, LARGE, third], steps=1)
    assert result.model.coordinates == pytest.approx([0, 1, 2], abs=1e-9)
    assert result.model.rms_log_residual < 1e-9
    expected = {d: SMALL.tokens[d] * (LARGE.tokens[d] / SMALL.tokens[d]) ** 3 for d in SMALL.tokens}
    assert result.tokens == pytest.approx(expected, rel=1e-8)


def test_inconsistent_third_budget_shows_a_residual():
    odd = Mixture.from_tokens({"web": 2.0e6, "code": 1.0e6, "books": 1.0e6}, "ddo")
    result = predict([SMALL, LARGE, odd], target_tokens=1e7)
    assert result.model.rms_log_residual > 0.05
    assert math.fsum(result.tokens.values()) == pytest.approx(1e7, rel=1e-12)


def test_report_flags_weights_leaving_the_proxy_range_and_change_per_doubling():
    result = predict([SMALL, LARGE], target_tokens=1e8)
    web = result.report["web"]
    assert web.leaves_proxy_range
    observed = (LARGE.weights["web"] / SMALL.weights["web"]) ** (1 / math.log2(2.0))
    assert web.observed_change_per_doubling == pytest.approx(observed)
    assert web.predicted_change_per_doubling > 1.0  # web keeps growing
    assert result.report["books"].predicted_change_per_doubling < 1.0


def test_floor_and_change_cap_bound_the_prediction():
    raw = predict([SMALL, LARGE], target_tokens=1e8)
    doublings = math.log2(1e8 / LARGE.total_tokens)
    # The unguarded trend shrinks books faster than the cap allows.
    assert raw.weights["books"] < LARGE.weights["books"] / 1.25 ** doublings
    guards = PredictGuards(floor={"*": 0.1}, max_change_per_doubling=1.25)
    guarded = predict([SMALL, LARGE], target_tokens=1e8, guards=guards)
    assert sum(guarded.weights.values()) == pytest.approx(1.0, abs=1e-12)
    for d, w in guarded.weights.items():
        assert w >= 0.1 - 1e-12
        factor = w / LARGE.weights[d]
        assert 1.25 ** -doublings - 1e-9 <= factor <= 1.25 ** doublings + 1e-9
    assert guarded.report["books"].guard in ("floor", "change cap")
    assert sum(guarded.tokens.values()) == pytest.approx(1e8)


def test_trend_within_noise_uses_sensitivity_intervals():
    def with_interval(mixture, half_width):
        copy = Mixture(mixture.total_tokens, mixture.weights, mixture.tokens, "ddo", {})
        copy.provenance["sensitivity"] = {"weights": {
            d: {"lo": w - half_width, "hi": w + half_width} for d, w in mixture.weights.items()}}
        return copy

    wide = predict([with_interval(SMALL, 0.2), with_interval(LARGE, 0.2)], steps=1)
    narrow = predict([with_interval(SMALL, 0.001), with_interval(LARGE, 0.001)], steps=1)
    assert all(r.trend_within_noise for r in wide.report.values())
    assert not any(r.trend_within_noise for r in narrow.report.values())
    assert predict([SMALL, LARGE], steps=1).report["web"].trend_within_noise is None


def test_domains_kept_at_base_by_ddo_are_reported_per_budget(caplog):
    flat = Mixture(LARGE.total_tokens, LARGE.weights, LARGE.tokens, "ddo",
                   {"fits": {"web": {"flat": True}, "code": {"flat": False}}, "pinned": {"books": "failed"}})
    report = predict([SMALL, flat], steps=1).report
    assert report["web"].kept_at_base_at == [LARGE.total_tokens]
    assert report["books"].kept_at_base_at == [LARGE.total_tokens]
    assert report["code"].kept_at_base_at == []
    assert "'web': DDO kept it at its base quantity" in caplog.text


def test_domains_without_a_measured_trend_are_held_unless_asked():
    flat = Mixture(LARGE.total_tokens, LARGE.weights, LARGE.tokens, "ddo", {"fits": {"web": {"flat": True}}})
    held = predict([SMALL, flat], target_tokens=1e8)
    assert held.weights["web"] == pytest.approx(LARGE.weights["web"], rel=1e-12)
    assert held.report["web"].guard == "held (no measured trend)"
    # The other domains keep their trend's ratio to each other.
    free = predict([SMALL, flat], target_tokens=1e8, guards=PredictGuards(hold_unmeasured=False))
    assert free.weights["web"] != pytest.approx(LARGE.weights["web"], rel=1e-3)
    assert held.weights["code"] / held.weights["books"] == pytest.approx(
        free.weights["code"] / free.weights["books"], rel=1e-9)
    assert free.report["web"].guard is None


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 1, "target_tokens": 1e9}, "exactly one"),
    ({}, "exactly one"),
    ({"target_tokens": 10.0}, "below what the trend reaches"),
    ({"target_tokens": -5.0}, "positive"),
])
def test_bad_requests_are_clear_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        predict([SMALL, LARGE], **kwargs)


def test_mismatched_or_degenerate_inputs_are_clear_errors():
    other = Mixture.from_tokens({"web": 1.0, "code": 1.0}, "ddo")
    with pytest.raises(InputError, match="different domains"):
        predict([SMALL, other], steps=1)
    with pytest.raises(InputError, match="same budget"):
        predict([SMALL, SMALL], steps=1)
    with pytest.raises(InputError, match="two or more"):
        predict([SMALL], steps=1)
    zero = Mixture.from_tokens({"web": 0.0, "code": 5e5, "books": 5e5}, "ddo")
    with pytest.raises(InputError, match="no tokens"):
        predict([zero, LARGE], steps=1)


def test_capped_simplex_projection_keeps_ratios_of_free_domains():
    weights = np.array([0.7, 0.2, 0.1])
    projected = project_capped_simplex(weights, np.array([0, 0, 0.3]), np.ones(3))
    assert projected.sum() == pytest.approx(1.0)
    assert projected[2] == pytest.approx(0.3)
    assert projected[0] / projected[1] == pytest.approx(3.5)


def test_ceiling_caps_a_growing_domain_and_is_named():
    raw = predict([SMALL, LARGE], target_tokens=1e8)
    top = max(raw.weights, key=raw.weights.get)
    ceiling = raw.weights[top] * 0.8
    guarded = predict([SMALL, LARGE], target_tokens=1e8,
                      guards=PredictGuards(ceiling={top: ceiling}))
    assert guarded.weights[top] == pytest.approx(ceiling)
    assert guarded.report[top].guard == "ceiling"
    assert sum(guarded.weights.values()) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(InputError, match="ceiling"):
        PredictGuards(ceiling={"web": 0.0})


def test_pipeline_max_epochs_becomes_ceilings_from_the_manifest(prepared, tmp_path):
    from autoscale_ds.orchestrate.pipeline import PipelineConfig, guard_settings

    config = PipelineConfig(manifest=str(prepared.root / "manifest.yaml"),
                            output_dir=str(tmp_path), budgets=[1000, 2000],
                            target_tokens=1e6, predict={"max_epochs": 1, "floor": {"*": 0.01}})
    settings = guard_settings(config)
    assert settings["floor"] == {"*": 0.01} and "max_epochs" not in settings
    for domain, entry in prepared.domains.items():
        assert settings["ceiling"][domain] == pytest.approx(
            min(1.0, 0.99 * entry.train.tokens / 1e6))
    with pytest.raises(InputError, match="needs target_tokens"):
        guard_settings(PipelineConfig(manifest=config.manifest, output_dir=str(tmp_path),
                                      budgets=[1000, 2000], steps=1, predict={"max_epochs": 1}))


# ---------------------------------------------- whole tokens at any size (issue 11, item 13)

from autoscale_ds.method.ddo import integer_tokens  # noqa: E402
from autoscale_ds.method.predict import prediction_to_mixture  # noqa: E402


@pytest.mark.parametrize("target", [10**19, 10**20, 10**30, 12345678901234567890123, 4_500_001])
def test_a_predicted_mixture_has_exactly_the_target_in_whole_tokens(target):
    guards = PredictGuards()
    mixture = prediction_to_mixture(predict([SMALL, LARGE], target_tokens=target, guards=guards),
                                    [], guards)
    assert mixture.total_tokens == target and sum(mixture.tokens.values()) == target
    assert all(type(n) is int and n > 0 for n in mixture.tokens.values())
    for domain, weight in mixture.weights.items():
        assert mixture.tokens[domain] / target == pytest.approx(weight, rel=1e-12, abs=1.0 / target)


def test_a_steps_prediction_rounds_to_its_own_total():
    guards = PredictGuards()
    prediction = predict([SMALL, LARGE], steps=1, guards=guards)
    mixture = prediction_to_mixture(prediction, [], guards)
    assert mixture.total_tokens == round(sum(prediction.tokens.values()))
    assert sum(mixture.tokens.values()) == mixture.total_tokens


@pytest.mark.parametrize("tokens, total, expected", [
    ([0.6, 0.6, 0.6], None, [1, 1, 0]),             # rounded sum 2; ties go to the first
    ([1.2, 2.7, 3.1], None, [1, 3, 3]),             # largest remainder gets the +1
    ([1.0, 1.0, 1.0], 10**30, [333333333333333333333333333334, 333333333333333333333333333333,
                               333333333333333333333333333333]),
    ([1e19, 3e19], 4 * 10**19, [10**19, 3 * 10**19]),  # past int64: no wrap-around
])
def test_integer_tokens_is_exact_largest_remainder(tokens, total, expected):
    rounded = integer_tokens(np.array(tokens), total)
    assert rounded == expected and all(type(n) is int for n in rounded)


def test_a_target_beyond_float_range_is_an_input_error():
    with pytest.raises(InputError, match="target tokens must be a positive number"):
        predict([SMALL, LARGE], target_tokens=10**400)
    with pytest.raises(InputError, match="floating-point range"):
        predict([SMALL, LARGE], steps=1e6)
