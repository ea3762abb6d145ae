"""Noise-aware DDO and prediction: shrinkage, trends with noise, and the backtest."""

import json
import math

import numpy as np
import pytest

from autoscale_ds.method.backtest import SCHEMA, backtest, objective_loss
from autoscale_ds.method.ddo import DDOOptions, build_design, result_to_mixture, solve_design
from autoscale_ds.errors import InputError
from autoscale_ds.formats.schemas import Mixture, runs_from_dict
from autoscale_ds.method.noise_aware import log_weight_noise, shrink_ddo_mixture, unshrunk
from autoscale_ds.method.predict import predict, weight_trends
from autoscale_ds.method.sensitivity import residual_noise, weight_intervals
from autoscale_ds.method.shrinkage import shrink_toward_zero

from synthetic import make_runs

DOMAINS = ["web", "code", "books", "math", "chat", "news"]


def _with_noise(tokens, log_noise):
    """A DDO-like mixture whose weights carry a sensitivity report with ``log_noise``."""
    mixture = Mixture.from_tokens(dict(zip(DOMAINS, tokens)), "ddo")
    entries = {d: {"weight": w, "log_noise": log_noise, "lo": w, "hi": w, "std": w * log_noise,
                   "base_weight": 1 / len(DOMAINS)} for d, w in mixture.weights.items()}
    mixture.provenance["sensitivity"] = {"weights": entries}
    return mixture


def _power_law_mixtures(budgets, exponents, log_noise=0.0, seed=None):
    """Mixtures on AutoScale's own model, ``N_i(s) = 1e5 * 2^(g_i s)`` at ``s = 0, 1, ...``
    (one per entry of ``budgets``, which only sets how many), times noise when ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(len(budgets)):
        tokens = 1e5 * np.power(2.0, np.asarray(exponents) * s)
        if seed is not None:
            tokens = tokens * np.exp(log_noise * rng.standard_normal(len(tokens)))
        out.append(_with_noise(tokens.tolist(), log_noise))
    return out


# ------------------------------------------------------------------------- shrinkage

def test_shrinkage_vanishes_as_the_noise_goes_to_zero():
    estimates = [0.4, -0.3, 0.1, 0.0, -0.2]
    previous = -1.0
    for scale in (1.0, 0.1, 0.01, 1e-4, 0.0):
        result = shrink_toward_zero(estimates, [scale * 0.05] * len(estimates))
        smallest = min(result.factors)
        assert smallest >= previous  # less noise, less shrinkage
        previous = smallest
    assert result.factors == [1.0] * len(estimates)
    assert result.shrunk == estimates


def test_moves_no_larger_than_their_noise_are_not_acted_on():
    result = shrink_toward_zero([0.1, -0.2, 0.05], [0.04, 0.05, 0.02])  # sum m^2 < sum v
    assert result.prior_variance == 0.0
    assert result.shrunk == [0.0, 0.0, 0.0]


def test_unknown_variances_are_not_shrunk_and_do_not_inform_the_prior():
    result = shrink_toward_zero([1.0, 0.1], [None, 0.01])
    assert result.factors[0] == 1.0
    assert result.prior_variance == pytest.approx(0.0, abs=1e-12)
    assert shrink_toward_zero([1.0], [None]).prior_variance is None


# --------------------------------------------------------------------------- predict

def test_without_noise_information_the_prediction_is_the_papers_rule():
    small = Mixture.from_tokens({"web": 1e5, "code": 2e5, "books": 7e5}, "ddo")
    large = Mixture.from_tokens({"web": 3e5, "code": 5e5, "books": 12e5}, "ddo")
    aware = predict([small, large], steps=1)
    plain = predict([small, large], steps=1, noise_aware=False)
    assert aware.weights == plain.weights
    expected = {d: large.tokens[d] ** 2 / small.tokens[d] for d in small.tokens}
    assert aware.tokens == pytest.approx(expected, rel=1e-12)
    assert all(r.shrinkage is None for r in aware.report.values())


def test_the_prediction_converges_to_the_plain_rule_as_the_noise_vanishes():
    exponents = [1.3, 1.0, 0.8, 1.1, 0.9, 1.0]
    plain = predict(_power_law_mixtures([1e5, 2e5], exponents), target_tokens=3e7,
                    noise_aware=False).weights
    gaps = []
    for log_noise in (0.3, 0.03, 0.003, 0.0):
        aware = predict(_power_law_mixtures([1e5, 2e5], exponents, log_noise), target_tokens=3e7)
        gaps.append(max(abs(aware.weights[d] - plain[d]) for d in plain))
    assert gaps[0] > 0.01  # real shrinkage at 30 % noise per weight
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] == 0.0


def test_a_pure_noise_trend_is_not_extrapolated():
    """Weights that only wobble by their own noise between budgets: the noise-aware
    prediction stays at the largest budget's weights, the plain rule runs away with the
    wobble. Over many draws, the noise-aware change is a small fraction of the plain one."""
    log_noise = 0.15
    raw_change, aware_change = [], []
    for seed in range(40):
        mixtures = _power_law_mixtures([1e5, 2e5, 4e5], [1.0] * 6, log_noise, seed=seed)
        last = mixtures[-1].weights
        for flag, sink in ((False, raw_change), (True, aware_change)):
            weights = predict(mixtures, target_tokens=1e8, noise_aware=flag).weights
            sink.append(np.mean([abs(math.log(weights[d] / last[d])) for d in last]))
    assert np.mean(aware_change) < 0.25 * np.mean(raw_change)
    assert np.median(aware_change) < 0.05


def test_a_clear_trend_is_extrapolated():
    exponents = [1.5, 1.0, 0.6, 1.0, 1.0, 1.0]
    mixtures = _power_law_mixtures([1e5, 2e5, 4e5], exponents, log_noise=0.01)
    result = predict(mixtures, target_tokens=1e8)
    plain = predict(mixtures, target_tokens=1e8, noise_aware=False)
    for domain in ("web", "books"):
        assert result.report[domain].shrinkage > 0.99
        assert result.weights[domain] == pytest.approx(plain.weights[domain], rel=0.02)


def test_trends_use_every_budget_and_report_their_residual():
    exponents = [1.2, 1.0, 0.9, 1.0, 1.0, 1.0]
    mixtures = _power_law_mixtures([1e5, 2e5, 4e5, 8e5], exponents, log_noise=0.05)
    trends = weight_trends(mixtures)
    assert np.all(trends.rms_log_residual < 0.01)  # the total's curvature only
    # Weight exponent = token exponent minus the total's local exponent: web grows fastest.
    assert trends.slope[0] > trends.slope[1] > trends.slope[2]
    totals = np.log2([m.total_tokens for m in mixtures])
    assert trends.variance[0] == pytest.approx(0.05**2 / np.sum((totals - totals.mean()) ** 2))
    report = predict(mixtures, target_tokens=1e8).report
    assert report["web"].trend_log_residual == pytest.approx(trends.rms_log_residual[0])
    noisy = _power_law_mixtures([1e5, 2e5, 4e5, 8e5], exponents, log_noise=0.05, seed=3)
    assert np.mean(weight_trends(noisy).rms_log_residual) > 0.01


def test_the_mixture_records_the_shrinkage():
    from autoscale_ds.method.predict import PredictGuards, prediction_to_mixture

    mixtures = _power_law_mixtures([1e5, 2e5], [1.3, 1.0, 0.8, 1.1, 0.9, 1.0], log_noise=0.2)
    prediction = predict(mixtures, target_tokens=3e7)
    record = prediction_to_mixture(prediction, [], PredictGuards()).provenance["noise_aware"]
    assert record["applied"] is True
    assert set(record["factors"]) == set(DOMAINS)
    assert all(0 <= k <= 1 for k in record["factors"].values())
    assert record["unshrunk_weights"]["web"] == prediction.report["web"].raw_weight


# ------------------------------------------------------------------------------ DDO

def _ddo(noise, seed=0, ratios=(0.2, 3.0), base_repeats=3):
    a = [0.3, 0.1, 0.5, 0.2]
    b = [0.4, 0.9, 0.2, 0.6]
    runs = runs_from_dict(make_runs(DOMAINS[:4], a, b, [1e6] * 4, ratios=ratios,
                                    base_repeats=base_repeats, noise=noise, seed=seed))
    options = DDOOptions()
    design = build_design(runs, options)
    mixture = result_to_mixture(solve_design(design, options, warn=False), {})
    return design, options, mixture


def test_noise_aware_ddo_keeps_clear_moves_and_drops_moves_within_noise():
    design, options, mixture = _ddo(noise=1e-4)
    mixture.provenance["sensitivity"] = weight_intervals(design, options, draws=40).to_dict()
    quiet = shrink_ddo_mixture(mixture)
    assert quiet.weights == pytest.approx(mixture.weights, abs=0.01)
    design, options, mixture = _ddo(noise=1e-4)
    loud = weight_intervals(design, options, relative_sigma=0.2, draws=40).to_dict()
    mixture.provenance["sensitivity"] = loud
    shrunk = shrink_ddo_mixture(mixture)
    distance = {name: sum(abs(w - 0.25) for w in m.weights.values())
                for name, m in (("raw", mixture), ("shrunk", shrunk))}
    assert distance["shrunk"] < distance["raw"]
    assert all(k < 1 for k in shrunk.provenance["noise_aware"]["factors"].values())
    assert sum(shrunk.tokens.values()) == mixture.total_tokens
    assert unshrunk(shrunk).weights == mixture.weights
    assert log_weight_noise(shrunk)["web"] == pytest.approx(
        shrunk.provenance["noise_aware"]["factors"]["web"] * loud["weights"]["web"]["log_noise"])


def test_noise_aware_ddo_without_noise_information_is_the_plain_optimum():
    _, _, mixture = _ddo(noise=0.0, base_repeats=1)
    result = shrink_ddo_mixture(mixture)
    assert result.weights == mixture.weights
    assert result.provenance["noise_aware"]["applied"] is False


def test_more_ratios_give_a_noise_estimate_from_the_fit_residuals():
    design, _, _ = _ddo(noise=0.01, ratios=(0.2, 0.5, 2.0, 3.0), base_repeats=1, seed=4)
    sigma, dof = residual_noise(design)
    assert dof == 4 * (5 - 3)
    assert 0.003 < sigma < 0.03
    design, _, _ = _ddo(noise=0.01, base_repeats=1)
    assert residual_noise(design) is None  # three points fit exactly: no residual


def test_perturbed_runs_can_be_replicated_over_seeds(tmp_path, prepared):
    from autoscale_ds.orchestrate.sweep import SweepConfig, plan_sweep

    config = SweepConfig(manifest=str(prepared.root / "manifest.yaml"), output_dir=str(tmp_path),
                         budget_tokens=20_000, seeds=[0, 1], replicate_perturbed=True,
                         ratios=[0.2, 0.5, 3], train={"seq_len": 32, "global_batch_size": 4,
                                                      "micro_batch_size": 4})
    runs = plan_sweep(config)
    domains = len(runs[0].config.tokens_per_domain)
    assert len(runs) == 2 + domains * 3 * 2
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == len(ids)
    first = [r for r in runs if r.run_id.endswith("-x3")]
    again = [r for r in runs if r.run_id.endswith("-x3-s1")]
    assert [r.config.seed for r in first] == [0] * domains
    assert [r.config.seed for r in again] == [1] * domains
    assert [r.config.tokens_per_domain for r in first] == [r.config.tokens_per_domain for r in again]
    plain = plan_sweep(SweepConfig(manifest=config.manifest, output_dir=str(tmp_path),
                                   budget_tokens=20_000, seeds=[0, 1], train=config.train))
    assert len(plain) == 2 + domains * 2


# -------------------------------------------------------------------------- backtest

def test_the_backtest_recovers_a_known_power_law_trend():
    exponents = [1.25, 1.0, 0.8, 1.1, 0.95, 1.0]
    mixtures = _power_law_mixtures([1e5, 2e5, 4e5, 8e5], exponents)
    record = backtest(mixtures)
    assert record["schema"] == SCHEMA
    assert record["held_out_budget"] == mixtures[-1].total_tokens
    assert set(record["domains"]) == set(DOMAINS)
    for entry in record["domains"].values():
        assert set(entry) == {"predicted", "ddo", "abs_error"}
        assert entry["abs_error"] < 1e-9
        assert entry["predicted"] == pytest.approx(entry["ddo"], abs=1e-9)
    noisy = _power_law_mixtures([1e5, 2e5, 4e5, 8e5], exponents, log_noise=0.01, seed=1)
    assert backtest(noisy)["methods"]["noise_aware"]["mean_abs_error"] < 0.01
    json.dumps(record)  # the record is plain JSON


def test_the_backtest_needs_three_budgets():
    with pytest.raises(InputError, match="3 or more budgets"):
        backtest(_power_law_mixtures([1e5, 2e5], [1.0] * 6))


def test_the_objective_loss_is_zero_at_the_ddo_optimum_and_positive_elsewhere():
    _, _, mixture = _ddo(noise=0.0)
    assert objective_loss(mixture, mixture.weights)["relative"] == pytest.approx(0.0, abs=1e-12)
    uniform = {d: 0.25 for d in mixture.weights}
    loss = objective_loss(mixture, uniform)
    assert loss["relative"] > 0
    assert loss["outside_fitted_ratios"] == []
    assert objective_loss(Mixture.from_tokens({"a": 1, "b": 2}, "ddo"), {"a": 0.5, "b": 0.5}) is None


def test_predict_backtest_on_the_command_line(tmp_path):
    from autoscale_ds.cli import main
    from autoscale_ds.formats.schemas import save_mixture

    paths = []
    for index, mixture in enumerate(_power_law_mixtures([1e5, 2e5, 4e5], [1.2, 1.0, 0.9, 1.0, 1.0, 1.0])):
        save_mixture(tmp_path / f"m{index}.json", mixture)
        paths += ["--mixture", str(tmp_path / f"m{index}.json")]
    out = tmp_path / "backtest.json"
    assert main(["predict", *paths, "--backtest", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["schema"] == SCHEMA and set(record["domains"]) == set(DOMAINS)
    assert main(["predict", *paths[:4], "--backtest", "--out", str(out)]) == 2
    assert main(["predict", *paths, "--out", str(tmp_path / "x.json")]) == 2  # no target


# ------------------------------------------------------------ paired (shared-seed) design

def _seeded_runs(seed_factors, effect_noise=0.0, replicate=True):
    """A sweep where seed s scales every objective by ``seed_factors[s]`` (what a shared
    initialisation does) and each run adds its own noise of relative size ``effect_noise``."""
    from synthetic import objective

    a, b = np.array([0.3, 0.1, 0.5]), np.array([0.4, 0.9, 0.2])
    names = ["web", "code", "books"]
    rng = np.random.default_rng(7)
    runs = []

    def add(run_id, x, seed):
        value = objective(x, a, b) * seed_factors[seed] * (1 + effect_noise * rng.standard_normal())
        runs.append({"id": run_id, "train_tokens": dict(zip(names, (1e6 * x).tolist())),
                     "eval": {"held_out": value}, "seed": seed})

    for seed in range(len(seed_factors)):
        add(f"base-s{seed}", np.ones(3), seed)
    for i, name in enumerate(names):
        for ratio in (0.2, 3.0):
            x = np.ones(3)
            x[i] = ratio
            for seed in (range(len(seed_factors)) if replicate else [0]):
                add(f"{name}-x{ratio}-s{seed}", x, seed)
    return runs_from_dict({"schema": "autoscale.runs/v1", "metric": "perplexity", "runs": runs})


def test_each_run_is_relative_to_its_own_seeds_base_run_where_that_measurably_helps():
    options = DDOOptions()
    exact = solve_design(build_design(_seeded_runs([1.0]), options), options).weights
    design = build_design(_seeded_runs([1.0, 1.15]), options)
    assert design.paired and design.use_pairing
    # A 15 % seed effect on every objective changes nothing: it cancels within each seed.
    assert solve_design(design, options).weights == pytest.approx(exact, abs=1e-9)
    # Without perturbed repeats pairing cannot be shown to help: the mean of the bases.
    unrepeated = build_design(_seeded_runs([1.0, 1.15], replicate=False), options)
    assert unrepeated.paired and not unrepeated.use_pairing
    assert np.all(unrepeated.normalizers(unrepeated.objectives) == np.mean(unrepeated.objectives[:2]))
    # Runs whose seed effect is their own (no common part): pairing adds noise, not used.
    chaotic = build_design(_seeded_runs([1.0, 1.0], effect_noise=0.05), options)
    assert not chaotic.use_pairing


def test_the_noise_of_an_effect_is_measured_from_perturbed_runs_repeated_over_seeds():
    from autoscale_ds.method.sensitivity import estimate_relative_noise, paired_noise

    design = build_design(_seeded_runs([1.0, 1.15], effect_noise=0.002), DDOOptions())
    sigma, dof = paired_noise(design)
    assert dof == 6 and sigma < 0.01  # the effects' own noise, not the seed's
    assert estimate_relative_noise(design) > 0.05  # the seed-to-seed spread of one objective
    report = weight_intervals(design, DDOOptions(), draws=30)
    assert report.sigma_source.startswith("paired")
    unpaired = build_design(_seeded_runs([1.0, 1.15], replicate=False), DDOOptions())
    assert paired_noise(unpaired) is None
    assert "upper bound" in weight_intervals(unpaired, DDOOptions(), draws=5).sigma_source


def test_the_plain_backtest_uses_the_plain_ddo_optima():
    mixtures = _power_law_mixtures([1e5, 2e5, 4e5], [1.2, 1.0, 0.9, 1.0, 1.0, 1.0])
    shrunk = []
    for mixture in mixtures:  # as a noise-aware sweep publishes them: moves shrunk away
        uniform = {d: 1 / 6 for d in DOMAINS}
        provenance = dict(mixture.provenance, noise_aware={
            "applied": True, "factors": {d: 0.0 for d in DOMAINS},
            "unshrunk_weights": dict(mixture.weights), "log_noise": {d: 0.0 for d in DOMAINS}})
        shrunk.append(Mixture(mixture.total_tokens, uniform,
                              {d: mixture.total_tokens / 6 for d in DOMAINS}, "ddo", provenance))
    record = backtest(shrunk)
    plain = record["methods"]["plain"]["domains"]
    assert plain["web"]["ddo"] == pytest.approx(mixtures[-1].weights["web"])
    assert plain["web"]["abs_error"] < 1e-5  # whole tokens
    assert record["domains"]["web"]["ddo"] == pytest.approx(1 / 6)
