"""The orchestrated path without training: the sweep's solve refuses mixed eval sets, carries
the noise through by default, and the pipeline's defaults and report show it."""

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoscale_ds.errors import InputError
from autoscale_ds.orchestrate.pipeline import PipelineConfig
from autoscale_ds.orchestrate.runner import SweepResult, _solve
from autoscale_ds.orchestrate.runs_store import RunsStore
from autoscale_ds.orchestrate.sweep import SweepConfig

from synthetic import make_runs

DOMAINS = ["web", "code", "books"]
FINGERPRINT = "e" * 64


@dataclass
class _Planned:
    """The part of a ProxyRun that the solve reads."""

    run_id: str

    @property
    def key(self) -> str:
        return f"key-{self.run_id}"


def _solve_sweep(out: Path, budget: float, ddo=None, eval_sets=None, base_repeats=2):
    """Record synthetic rows as the sweep's executor would, then solve like run_sweep."""
    payload = make_runs(DOMAINS, [0.5, 1.0, 0.2], [0.8, 0.5, 1.2], [budget / 3] * 3,
                        base_repeats=base_repeats, noise=0.003, seed=int(budget))
    planned = [_Planned(row["id"]) for row in payload["runs"]]
    store = RunsStore(out / "runs.json", [p.run_id for p in planned])
    for index, (run, row) in enumerate(zip(planned, payload["runs"])):
        fingerprint = FINGERPRINT if eval_sets is None else eval_sets[index]
        store.record(run.run_id, run.key, dict(row, eval_set={"fingerprint": fingerprint}))
    config = SweepConfig(manifest="unused.yaml", output_dir=str(out), budget_tokens=budget,
                         ddo=dict(ddo or {}, sensitivity_draws=20))
    mixture, pinned = _solve(config, out, store, planned)
    return SweepResult(mixture, out / "mixture.json", out / "runs.json", [], [], pinned)


def test_the_sweep_keeps_the_eval_set_and_estimates_the_noise_by_default(tmp_path):
    result = _solve_sweep(tmp_path, 3e5)
    provenance = result.mixture.provenance
    assert provenance["eval_set"] == {"fingerprint": FINGERPRINT, "mixed": False}
    assert provenance["sensitivity"]["sigma_source"].startswith("estimated from 1 group")
    assert set(provenance["sensitivity"]["weights"]) == set(DOMAINS)


def test_the_sweep_refuses_mixed_eval_sets_unless_its_ddo_section_allows_them(tmp_path):
    eval_sets = [FINGERPRINT] * 7 + ["f" * 64]  # books-x3 on another eval set
    with pytest.raises(InputError, match=r"books-x3 on ffffffffffff\.\.\..*allow_mixed_eval: true"):
        _solve_sweep(tmp_path / "refused", 3e5, eval_sets=eval_sets)
    result = _solve_sweep(tmp_path / "allowed", 3e5, ddo={"allow_mixed_eval": True},
                          eval_sets=eval_sets)
    assert result.mixture.provenance["eval_set"]["mixed"] is True


def test_a_single_base_run_leaves_the_noise_unknown_and_says_so(tmp_path, caplog):
    result = _solve_sweep(tmp_path, 3e5, base_repeats=1)
    assert result.mixture.provenance["sensitivity"] == {"skipped": "noise unknown"}
    assert "use seeds: [0, 1]" in caplog.text


def _pipeline(**overrides) -> PipelineConfig:
    settings = dict(manifest="m.yaml", output_dir="out", budgets=[1e5, 3e5], target_tokens=1e6)
    return PipelineConfig(**dict(settings, **overrides))


def test_the_pipeline_repeats_the_base_run_over_two_seeds_by_default(caplog):
    config = _pipeline()
    assert config.seeds == [0, 1] and config.sweep(1e5).seeds == [0, 1]
    assert "noise cannot be estimated" not in caplog.text


def test_an_explicit_single_seed_is_honoured_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert _pipeline(seeds=[3]).sweep(1e5).seeds == [3]
    assert "noise cannot be estimated" in caplog.text and "seeds: [0, 1]" in caplog.text
    caplog.clear()
    assert _pipeline(seeds=[3], ddo={"noise_sigma": 0.02}).seeds == [3]
    assert "noise cannot be estimated" not in caplog.text


def test_the_report_shows_intervals_and_noise_per_budget(tmp_path):
    from autoscale_ds.orchestrate.report import write_report
    from autoscale_ds.method.predict import PredictGuards, predict, prediction_to_mixture

    sweeps = [_solve_sweep(tmp_path / "ddo_300K", 3e5),
              _solve_sweep(tmp_path / "ddo_900K", 9e5, base_repeats=1)]
    prediction = predict([s.mixture for s in sweeps], target_tokens=1e7)
    mixture = prediction_to_mixture(prediction, [], PredictGuards())
    report = write_report(tmp_path, sweeps, prediction, mixture, tmp_path / "m.json", {}).read_text()
    assert "| domain | base w | DDO w | ratio | bound | fit | 90% interval | within noise |" in report
    assert "noise: relative sigma" in report  # 300K: two base runs
    assert "noise: unknown -- repeat the base run over seeds (seeds: [0, 1])" in report  # 900K
    assert report.count("| n/a | n/a |") == len(DOMAINS)


# Settings are checked (and typed) when the config is made, before any run (issue 11).


def test_token_counts_may_carry_a_suffix_and_floor_may_be_one_number():
    config = _pipeline(budgets=["100K", "300K"], target_tokens="10M", predict={"floor": 0.02})
    assert config.budgets == [1e5, 3e5] and config.target_tokens == 1e7
    assert config.sweep(1e5).budget_tokens == 1e5
    from autoscale_ds.orchestrate.pipeline import guard_settings

    assert guard_settings(config) == {"floor": {"*": 0.02}}
    assert SweepConfig(manifest="m.yaml", output_dir="o", budget_tokens="2.5M").budget_tokens == 2.5e6


def test_every_bad_field_is_named_in_one_line():
    with pytest.raises(InputError) as caught:
        _pipeline(seeds=5, ratios=["x"], train="abc", budgets=[1e5, "lots"], target_tokens="1e7",
                  ddo={"max_ratoi": 3, "noise_sigma": -1}, predict={"floors": {"*": 0.1}},
                  export={"formats": ["hf", "bogus"]})
    message = str(caught.value)
    assert "\n" not in message and message.startswith("pipeline config: ")
    for field in ("seeds: ", "ratios: ", "train: ", "budgets[1]: ", "ddo.max_ratoi: ", "ddo.noise_sigma: ",
                  "predict.floors: unknown setting; did you mean floor?", "export.formats: unknown format 'bogus'"):
        assert field in message, field
    assert "target_tokens" not in message  # "1e7" is a count


def test_the_config_loaders_name_the_file_and_read_the_shipped_examples(tmp_path):
    from autoscale_ds.orchestrate.pipeline import load_pipeline_config
    from autoscale_ds.orchestrate.sweep import load_sweep_config

    root = Path(__file__).resolve().parents[2]
    assert load_pipeline_config(root / "examples" / "demo_pipeline.yaml").target_tokens == 1_500_000
    assert load_sweep_config(root / "examples" / "ddo_cpu.yaml").budget_tokens == 20_000
    config = tmp_path / "sweep.yaml"
    config.write_text("manifest: m.yaml\noutput_dir: out\nbudget_tokens: 1000\nseeds: 5\n")
    with pytest.raises(InputError, match=rf"^sweep config {config}: seeds: .* got 5$"):
        load_sweep_config(config)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("manifest: m.yaml\noutput_dir: out\nbudgets: [1000, 2000]\nsteps: 1\n")
    with pytest.raises(InputError, match=rf"^pipeline config {pipeline}: predict.max_epochs: needs target_tokens"):
        load_pipeline_config(pipeline, {"predict": {"max_epochs": 1}})
