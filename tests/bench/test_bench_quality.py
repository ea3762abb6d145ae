"""bench/quality.py: its honest-comparison figures (paired differences, epochs, one eval
set, noise) by hand on made-up rows, and end to end at a tiny size: every arm trains over
seeds, the figures and the plot are written, and a rerun reuses the finished runs."""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from curves import (max_epochs, paired_difference, repeated_domains, run_epochs,
                                 shared_eval_fingerprint)
from autoscale_ds.errors import InputError
from conftest import load_bench_module

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
T_95_2DF = 2.919986  # Student t, 95th percentile, 2 degrees of freedom (printed tables)


def _load_quality():
    return load_bench_module("quality")


# ---------------------------------------------------------------- pure figures

def test_paired_difference_and_its_90_percent_t_interval():
    # differences -1, -2, -3: mean -2, sample std 1, standard error 1/sqrt(3)
    diff = paired_difference([9.0, 18.0, 27.0], [10.0, 20.0, 30.0])
    assert diff.per_seed == [-1.0, -2.0, -3.0] and diff.mean == -2.0
    half = T_95_2DF / math.sqrt(3)
    assert diff.interval == pytest.approx((-2.0 - half, -2.0 + half), abs=1e-5)
    assert diff.relative == pytest.approx(-2.0 / 20.0)
    assert diff.verdict() == "better"  # (-3.69, -0.31) excludes 0, below it
    assert diff.verdict(lower_is_better=False) == "worse"


def test_a_paired_difference_within_noise_and_with_one_seed():
    # differences +1, -1, +3: mean 1, sample std 2, half width t * 2 / sqrt(3) = 3.37
    diff = paired_difference([11.0, 9.0, 13.0], [10.0, 10.0, 10.0])
    assert diff.interval == pytest.approx((1 - 2 * T_95_2DF / math.sqrt(3),
                                           1 + 2 * T_95_2DF / math.sqrt(3)), abs=1e-5)
    assert diff.verdict() == "within noise"
    one = paired_difference([9.0], [10.0])
    assert one.mean == -1.0 and one.interval is None and one.verdict() == "unknown (1 seed)"
    with pytest.raises(InputError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])


def test_epochs_come_from_the_row_or_from_tokens_over_the_manifest():
    assert run_epochs({"epochs": {"a": 0.5}}) == {"a": 0.5}
    older = {"id": "old", "train_tokens": {"a": 300, "b": 50}}  # written before rows had epochs
    assert run_epochs(older, {"a": 200, "b": 100}) == {"a": 1.5, "b": 0.5}
    with pytest.raises(InputError, match="manifest"):
        run_epochs(older)
    rows = [{"epochs": {"a": 0.4, "b": 1.2}}, {"epochs": {"a": 0.9, "b": 1.0}}]
    assert max_epochs(rows) == {"a": 0.9, "b": 1.2}
    assert repeated_domains({"a": 0.9, "b": 1.2, "c": 1.0}) == ["b"]  # exactly one pass is fresh


def test_runs_on_different_eval_sets_are_refused_by_name():
    same = {"eval_set": {"fingerprint": "a" * 64}}
    assert shared_eval_fingerprint({"x": same, "y": same}) == "a" * 64
    assert shared_eval_fingerprint({"x": {}, "y": {}}) is None  # runs older than fingerprints
    with pytest.raises(InputError, match=r"different eval sets.*aaaaaaaaaaaa: x.*bbbbbbbbbbbb: y"):
        shared_eval_fingerprint({"x": same, "y": {"eval_set": {"fingerprint": "b" * 64}}})
    with pytest.raises(InputError, match="no recorded eval set: y"):
        shared_eval_fingerprint({"x": same, "y": {}})


def _arm_row(ppl_steps, epochs, fingerprint="f" * 64, halves=None):
    """A result row whose two domains both follow ``ppl_steps`` at steps 1, 2, 3."""
    row = {"status": "ok", "epochs": epochs, "eval": {"a": ppl_steps[-1], "b": ppl_steps[-1]},
           "eval_set": {"fingerprint": fingerprint, "tokens": {"a": 64, "b": 64}},
           "evals": [{"step": i + 1, "perplexity": {"a": v, "b": v}} for i, v in enumerate(ppl_steps)]}
    if halves is not None:
        row["eval_halves"] = halves
    return row


def test_compare_pairs_seeds_flags_repeats_and_reports_noise():
    quality = _load_quality()
    fresh, repeated = {"a": 0.5, "b": 0.5}, {"a": 1.5, "b": 0.2}
    halves = [{"a": 9.0, "b": 11.0}, {"a": 11.0, "b": 13.0}]  # averages 10 and 12: 2/11
    rows = {"autoscale": [_arm_row([20, 12, 9], fresh, halves=halves), _arm_row([20, 13, 10], fresh),
                          _arm_row([20, 14, 11], fresh)],
            "uniform": [_arm_row([20, 14, 10], repeated), _arm_row([20, 15, 12], fresh),
                        _arm_row([20, 16, 14], fresh)]}
    results, _ = quality.compare(rows, {"autoscale": {"a": 0.5, "b": 0.5}, "uniform": {"a": 0.5, "b": 0.5}},
                                 [0, 1, 2], 100, {"a": 1000, "b": 1000})
    paired = results["paired"]["uniform"]
    assert paired["difference_per_seed"] == [-1.0, -2.0, -3.0]  # finals 9 10 11 vs 10 12 14
    assert paired["difference_mean"] == -2.0
    half = T_95_2DF / math.sqrt(3)
    assert paired["difference_interval"] == pytest.approx([-2.0 - half, -2.0 + half], abs=1e-5)
    assert paired["relative_difference"] == pytest.approx(-2.0 / 12.0)
    assert paired["verdict"] == "better"
    # Per seed, autoscale reaches uniform's final 10 / 12 / 14 at 266.7 (12 -> 9 between 200 and
    # 300 tokens) / 233.3 (13 -> 10) / 200 tokens (its 2nd eval is 14): 1 - those / 300.
    assert paired["speedup_per_seed"] == pytest.approx([1 / 9, 2 / 9, 1 / 3])
    assert set(results["paired"]) == {"uniform"}
    assert results["epochs"] == {"autoscale": fresh, "uniform": {"a": 1.5, "b": 0.5}}
    assert results["repeats"] == {"autoscale": [], "uniform": ["a"]}
    assert results["noise"]["seed_relative_std"]["autoscale"] == pytest.approx(1.0 / 10.0)
    assert results["noise"]["eval_halves"] == {"runs": 1, "mean": pytest.approx(2 / 11),
                                               "max": pytest.approx(2 / 11)}
    assert results["eval_set"] == {"fingerprint": "f" * 64, "tokens": {"a": 64, "b": 64}}
    summary = {s["arm"]: s for s in results["summary"]}
    assert summary["uniform"]["final_per_seed"] == [10.0, 12.0, 14.0]
    assert summary["uniform"]["final_sample_std"] == pytest.approx(2.0)


def test_compare_stops_on_runs_measured_on_different_eval_sets():
    quality = _load_quality()
    epochs = {"a": 0.5, "b": 0.5}
    rows = {"autoscale": [_arm_row([20, 10, 9], epochs), _arm_row([20, 10, 9], epochs)],
            "uniform": [_arm_row([20, 10, 9], epochs), _arm_row([20, 10, 9], epochs, fingerprint="e" * 64)]}
    with pytest.raises(InputError, match="different eval sets.*arms/uniform/seed1"):
        quality.compare(rows, {}, [0, 1], 100, {"a": 1000, "b": 1000})


def test_report_prints_repeats_intervals_and_noise(capsys):
    quality = _load_quality()
    epochs = {"a": 0.5, "b": 0.5}
    rows = {"autoscale": [_arm_row([20, 12, 9], epochs)],
            "tokens": [_arm_row([20, 14, 10], {"a": 2.0, "b": 0.1})]}
    results, _ = quality.compare(rows, {"autoscale": {"a": 0.5, "b": 0.5}, "tokens": {"a": 0.9, "b": 0.1}},
                                 [0], 100, {"a": 1000, "b": 1000})
    assert results["paired"]["tokens"]["difference_interval"] is None
    quality.print_report(results)
    printed = capsys.readouterr().out
    assert "| tokens    | 2.00 | 0.10 | REPEATS a |" in printed  # the epochs table
    assert "| tokens (REPEATS) |" in printed  # and its name wherever its perplexity is shown
    assert "n/a (1 seed)" in printed and "One seed: no interval" in printed
    assert "eval sampling error: not recorded" in printed
    assert "eval set: ffffffffffff, shared by every run (128 tokens)" in printed


# ---------------------------------------------------------------- end to end


def _arm_result(out: Path, arm: str, seed: int) -> dict:
    return json.loads((out / "arms" / arm.replace("@", "_at_") / f"seed{seed}" / "result.json")
                      .read_text())["runs"][0]


def _run(config: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--config", str(config),
                           "--seeds", "2", "--evals", "3", "--direct-ddo", "--unheld", "--out", str(out),
                           "--arms", "uniform,tokens,ddo,autoscale,autoscale-plain,temperature"],
                          env=env, capture_output=True, text=True, timeout=900)


def test_quality_benchmark_trains_every_arm_and_reports_speedups(prepared, tmp_path):
    config = tmp_path / "autoscale.yaml"
    config.write_text(yaml.safe_dump({
        "manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(tmp_path / "pipeline"),
        "budgets": [3072, 6144], "target_tokens": 12288, "domains": ["code", "docstrings"],
        "train": {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8,
                  "eval_samples_per_domain": 4, "learning_rate": 3e-3},
        "executor": {"kind": "inprocess"}, "ddo": {"sensitivity_draws": 0},
        "predict": {"floor": {"*": 0.05}}, "export": {"formats": []},
    }))
    out = tmp_path / "quality"
    first = _run(config, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = json.loads((out / "quality.json").read_text())
    arms = [s["arm"] for s in results["summary"]]
    predicted = json.loads((tmp_path / "pipeline" / "mixture_12.3K.json").read_text())
    held = any(r["guard"] == "held (no measured trend)"
               for r in predicted["provenance"]["report"].values())
    # The unheld arm exists exactly when the prediction held a domain.
    assert arms == ["uniform", "tokens", "ddo@6.14K", "autoscale", "autoscale-plain",
                    *(["autoscale-unheld"] if held else []), "ddo@12.3K", "temperature"]
    # Proxy compute next to each result: the pipeline's for its arms, none for closed forms.
    pipeline_tokens = json.loads((tmp_path / "pipeline" / "summary.json").read_text())["proxy_tokens_trained"]
    assert pipeline_tokens > 0 and results["proxy_tokens"]["autoscale"] == pipeline_tokens
    assert results["proxy_tokens"]["temperature"] == 0 and results["proxy_tokens"]["ddo@12.3K"] is None
    temperature = json.loads((out / "mix" / "temperature" / "mixture.json").read_text())
    assert temperature["method"] == "temperature"
    assert results["weights"]["temperature"] == pytest.approx(temperature["weights"])
    assert results["weights"]["autoscale"] == pytest.approx(predicted["weights"])
    assert set(results["speedup"]) == set(arms) - {"autoscale"}
    for summary in results["summary"]:
        assert summary["seeds"] == 2 and summary["final_mean"] > 1.0
        assert set(summary["per_domain"]) == {"code", "docstrings"}
    # 48 steps evaluated every 16: the curve has 3 points, the last at the whole budget.
    assert results["curves"]["uniform"]["tokens"] == [4096.0, 8192.0, 12288.0]
    assert abs(sum(results["weights"]["autoscale"].values()) - 1) < 1e-9
    assert (out / "quality_curves.png").stat().st_size > 10_000
    assert "Speed-up of AutoScale" in first.stdout
    # Paired by seed, from the runs' own final evaluations.
    finals = {arm: [np.mean(list(_arm_result(out, arm, s)["eval"].values())) for s in (0, 1)]
              for arm in ("autoscale", "uniform")}
    paired = results["paired"]["uniform"]
    assert paired["difference_per_seed"] == pytest.approx(
        [a - u for a, u in zip(finals["autoscale"], finals["uniform"])])
    low, high = paired["difference_interval"]
    assert low < paired["difference_mean"] < high and len(paired["speedup_per_seed"]) == 2
    assert set(results["paired"]) == set(arms) - {"autoscale"}
    # No noise information (sensitivity_draws: 0): the plain method is the method, so its arm
    # trains exactly autoscale's tokens and shares its runs.
    twins = results["identical_arms"]
    assert twins.get("autoscale-plain") == "autoscale"
    assert not (out / "arms" / "autoscale-plain").exists()
    assert results["weights"]["autoscale-plain"] == results["weights"]["autoscale"]
    # Epochs (most over seeds) and their flag, as the runs recorded them.
    for arm in arms:
        rows = [_arm_result(out, twins.get(arm, arm), s) for s in (0, 1)]
        assert results["epochs"][arm] == pytest.approx(
            {d: max(r["epochs"][d] for r in rows) for d in ("code", "docstrings")})
        assert results["repeats"][arm] == [d for d, e in results["epochs"][arm].items() if e > 1]
    # One eval set for every arm and seed, and its sampling error from every run's halves.
    fingerprints = {_arm_result(out, twins.get(arm, arm), s)["eval_set"]["fingerprint"]
                    for arm in arms for s in (0, 1)}
    assert fingerprints == {results["eval_set"]["fingerprint"]}
    assert results["noise"]["eval_halves"]["runs"] == 2 * len(arms)
    assert set(results["noise"]["seed_relative_std"]) == set(arms)
    assert "REPEATS" in first.stdout and "90% interval" in first.stdout
    # Seeds differ (init and order) while one seed gives every arm the same start.
    uniform = [json.loads((out / "arms" / "uniform" / f"seed{s}" / "result.json").read_text())
               for s in (0, 1)]
    assert uniform[0]["runs"][0]["eval"] != uniform[1]["runs"][0]["eval"]

    again = _run(config, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stderr.replace("training in this process", "")
    assert json.loads((out / "quality.json").read_text()) == results


def test_arms_that_train_the_same_tokens_share_their_runs():
    quality = _load_quality()
    planned = {"uniform": {"a": 512, "b": 512}, "tokens": {"a": 256, "b": 768},
               "ddo@8K": {"a": 512, "b": 512}, "autoscale": {"a": 512, "b": 512},
               "autoscale-plain": {"a": 256, "b": 768}}
    assert quality.identical_arms(planned) == {"ddo@8K": "uniform", "autoscale": "uniform",
                                               "autoscale-plain": "tokens"}
    assert quality.identical_arms({"uniform": {"a": 1}, "tokens": {"a": 2}}) == {}


def test_a_mixture_file_can_be_added_as_an_arm(tmp_path):
    from autoscale_ds.formats.schemas import Mixture, save_mixture

    quality = _load_quality()
    save_mixture(tmp_path / "m.json", Mixture.from_tokens({"b": 300, "a": 100}, "autoscale"))
    arms = quality.extra_arms([f"paired={tmp_path / 'm.json'}"], ["a", "b"], {"uniform": {}})
    assert arms == {"paired": {"a": 0.25, "b": 0.75}}
    for spec, message in (("paired", "NAME=MIXTURE"), (f"uniform={tmp_path / 'm.json'}", "exists")):
        with pytest.raises(SystemExit, match=message):
            quality.extra_arms([spec], ["a", "b"], {"uniform": {}})
    with pytest.raises(SystemExit, match="domains"):
        quality.extra_arms([f"x={tmp_path / 'm.json'}"], ["a", "c"], {})


def test_arms_are_checked_and_autoscale_is_always_one():
    quality = _load_quality()
    assert quality.chosen_arms("uniform, autoscale,regmix,uniform") == ["uniform", "autoscale", "regmix"]
    with pytest.raises(SystemExit, match="unknown arm.*foo"):
        quality.chosen_arms("autoscale,foo")
    with pytest.raises(SystemExit, match="must include autoscale"):
        quality.chosen_arms("uniform,regmix")


def test_method_arms_get_proxies_sized_by_the_pipelines_budgets(tmp_path):
    from autoscale_ds.orchestrate.mix_config import mix_config_from

    quality = _load_quality()
    config = argparse.Namespace(manifest=str(tmp_path / "manifest.yaml"), budgets=[40_000, 160_000, 80_000],
                                target_tokens=1_500_000, train={"model_size": "tiny", "seq_len": 64},
                                executor={"kind": "local", "workers": 2}, output_dir=str(tmp_path / "p"))
    doremi = quality.mix_settings(config, "doremi", ["a", "b"], tmp_path / "mix" / "doremi")
    regmix = quality.mix_settings(config, "regmix", ["a", "b"], tmp_path / "mix" / "regmix")
    assert doremi["doremi"] == {"proxy_tokens": 160_000}
    assert regmix["regmix"] == {"proxy_tokens": 40_000, "runs": quality.REGMIX_RUNS}
    for settings in (doremi, regmix):  # valid `autoscale mix` settings
        assert mix_config_from(settings).target_tokens == 1_500_000
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "summary.json").write_text(json.dumps({"proxy_tokens_trained": 123}))
    tokens = quality.proxy_tokens_of(config, {"uniform": {}, "autoscale": {}, "ddo@160K": {}, "regmix": {}},
                                      {"regmix": 7})
    assert tokens == {"uniform": 0, "autoscale": 123, "ddo@160K": 123, "regmix": 7}


def test_an_arm_that_needs_more_than_the_proxies_epoch_cap_is_trained_and_flagged():
    quality = _load_quality()
    available = {"a": 64 * 100 + 1, "b": 64 * 1000 + 1}  # 100 and 1000 samples of 64 per epoch
    # Within one epoch: the pipeline's cap stays, so finished runs keep their fingerprints.
    assert quality.arm_epoch_cap(1, {"a": 100, "b": 10}, 64, available, "uniform") == 1
    assert quality.arm_epoch_cap(None, {"a": 500, "b": 10}, 64, available, "x") is None
    # 1.07 epochs of `a` (e.g. DoReMi's answer): trained with a cap of 2, not refused.
    assert quality.arm_epoch_cap(1, {"a": 107, "b": 10}, 64, available, "doremi") == 2.0
    assert quality.arm_epoch_cap(3, {"a": 350, "b": 10}, 64, available, "doremi") == 4.0
