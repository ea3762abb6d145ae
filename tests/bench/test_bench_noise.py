"""bench/noise.py: its figures by hand on made-up rows, and end to end at a tiny size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from curves import (eval_time_share, halves_spread, halves_summary,
                                 max_weight_difference, row_objective, seed_spread)
from autoscale_ds.errors import InputError
from conftest import load_bench_module

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


def _load_noise():
    return load_bench_module("noise")


# ---------------------------------------------------------------- pure figures

def test_halves_spread_is_the_relative_difference_of_the_two_averages():
    # averages 10 and 12 (mean 11): |10 - 12| / 11
    assert halves_spread([{"a": 8.0, "b": 12.0}, {"a": 9.0, "b": 15.0}]) == pytest.approx(2 / 11)
    assert halves_spread([{"a": 5.0}, {"a": 5.0}]) == 0.0


def test_halves_spread_refuses_malformed_halves():
    with pytest.raises(InputError, match="exactly two"):
        halves_spread([{"a": 1.0}])
    with pytest.raises(InputError, match="same domains"):
        halves_spread([{"a": 1.0}, {"b": 1.0}])


def test_halves_summary_skips_rows_without_halves():
    rows = [{"eval_halves": [{"a": 10.0}, {"a": 12.0}]},   # 2/11
            {"eval_halves": [{"a": 20.0}, {"a": 20.0}]},   # 0
            {"eval": {"a": 3.0}}]                            # older run: no halves
    summary = halves_summary(rows)
    assert summary["runs"] == 2
    assert summary["mean"] == pytest.approx(1 / 11) and summary["max"] == pytest.approx(2 / 11)
    assert halves_summary([{"eval": {"a": 3.0}}]) is None


def test_max_weight_difference_names_its_domain():
    first = {"a": 0.5, "b": 0.3, "c": 0.2}
    second = {"a": 0.45, "b": 0.40, "c": 0.15}
    difference, domain = max_weight_difference(first, second)
    assert difference == pytest.approx(0.10) and domain == "b"
    assert max_weight_difference(first, first) == (0.0, "a")
    with pytest.raises(InputError, match="same domains"):
        max_weight_difference(first, {"a": 1.0})


def test_seed_spread_uses_the_sample_std():
    spread = seed_spread([10.0, 12.0, 14.0])   # sample std 2
    assert (spread.mean, spread.std) == (12.0, 2.0)
    assert spread.relative_std == pytest.approx(2 / 12)
    one = seed_spread([7.0])
    assert one.mean == 7.0 and one.std is None and one.relative_std is None


def test_eval_time_share_averages_over_rows_that_record_it():
    rows = [{"eval_seconds": 1.0, "wall_seconds": 10.0}, {"eval_seconds": 3.0, "wall_seconds": 10.0},
            {"wall_seconds": 10.0}]
    share = eval_time_share(rows)
    assert share == {"runs": 2, "mean": pytest.approx(0.2), "max": pytest.approx(0.3)}
    assert eval_time_share([{"wall_seconds": 5.0}]) is None


def test_row_objective_is_the_plain_mean_of_the_final_eval():
    assert row_objective({"eval": {"a": 10.0, "b": 30.0}}) == 20.0
    with pytest.raises(InputError, match="no final evaluation"):
        row_objective({"id": "x", "eval": {}, "status": "failed"})


def _row(run_id, ppl_a, ppl_b, fingerprint="f" * 64, halves=None):
    row = {"id": run_id, "status": "ok", "eval": {"a": ppl_a, "b": ppl_b},
           "eval_set": {"fingerprint": fingerprint, "tokens": {"a": 100, "b": 100}},
           "wall_seconds": 10.0, "eval_seconds": 1.0}
    if halves:
        row["eval_halves"] = halves
    return row


def test_noise_figures_from_rows():
    noise = _load_noise()
    base = {0: _row("base-s0", 10.0, 14.0, halves=[{"a": 9.0, "b": 13.0}, {"a": 11.0, "b": 15.0}]),
            1: _row("base-s1", 11.0, 15.0, halves=[{"a": 11.0, "b": 15.0}, {"a": 11.0, "b": 15.0}]),
            2: _row("base-s2", 12.0, 16.0, halves=[{"a": 12.0, "b": 16.0}, {"a": 12.0, "b": 16.0}])}
    rows = {f"seed{s}/base": r for s, r in base.items()}
    ddo = {0: {"a": 0.5, "b": 0.3, "c": 0.2}, 1: {"a": 0.35, "b": 0.35, "c": 0.3}}
    figures = noise.noise_figures(base, ddo, rows)
    # objectives 12, 13, 14: mean 13, sample std 1
    assert figures["seed_spread"]["objective_per_seed"] == {"0": 12.0, "1": 13.0, "2": 14.0}
    assert figures["seed_spread"]["std"] == pytest.approx(1.0)
    assert figures["seed_spread"]["relative_std"] == pytest.approx(1 / 13)
    # halves: averages 11 vs 13 (spread 2/12), then 0 and 0: mean 1/18, max 1/6
    assert figures["eval_halves"]["mean"] == pytest.approx(1 / 18)
    assert figures["eval_halves"]["max"] == pytest.approx(1 / 6)
    assert figures["eval_halves"]["ratio_to_seed_spread"] == pytest.approx((1 / 18) / (1 / 13))
    assert figures["ddo"]["max_abs_weight_difference"] == pytest.approx(0.15)
    assert figures["ddo"]["domain"] == "a"
    assert figures["eval_time_share"]["mean"] == pytest.approx(0.1)
    assert figures["eval_set"]["fingerprint"] == "f" * 64


def test_noise_figures_refuse_runs_on_different_eval_sets():
    noise = _load_noise()
    base = {0: _row("base-s0", 10.0, 14.0), 1: _row("base-s1", 11.0, 15.0, fingerprint="e" * 64)}
    rows = {"seed0/runs/base-s0": base[0], "seed1/runs/base-s1": base[1]}
    with pytest.raises(InputError, match="different eval sets.*seed0/runs/base-s0.*seed1/runs/base-s1"):
        noise.noise_figures(base, {0: {"a": 1.0}, 1: {"a": 1.0}}, rows)


def test_noise_needs_two_distinct_seeds(capsys):
    noise = _load_noise()
    with pytest.raises(SystemExit):
        noise._parse_args(["--seeds", "3"])
    assert "two or more distinct seeds" in capsys.readouterr().err
    assert noise._parse_args(["--seeds", "4", "5"]).seeds == [4, 5]


# ---------------------------------------------------------------- end to end

def _run(config: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, str(ROOT / "bench" / "noise.py"), "--config", str(config),
                           "--seeds", "0", "1", "2", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)


def _result(path: Path) -> dict:
    return json.loads(path.read_text())["runs"][0]


def test_noise_tool_measures_seed_spread_eval_sampling_and_ddo_reproducibility(prepared, tmp_path):
    config = tmp_path / "autoscale.yaml"
    config.write_text(yaml.safe_dump({
        "manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(tmp_path / "pipeline"),
        "budgets": [2048, 4096], "target_tokens": 8192, "domains": ["code", "docstrings"],
        "train": {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8,
                  "eval_samples_per_domain": 4, "learning_rate": 3e-3},
        "executor": {"kind": "inprocess"}, "ddo": {"sensitivity_draws": 0}, "export": {"formats": []},
    }))
    out = tmp_path / "noise"
    first = _run(config, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    figures = json.loads((out / "noise.json").read_text())
    assert figures["budget_tokens"] == 2048 and figures["seeds"] == [0, 1, 2]
    assert not (tmp_path / "pipeline").exists()  # only the noise runs, no pipeline

    # (a) the base run of every seed, recomputed from its own result.json
    base = [_result(out / f"seed{s}" / "runs" / f"base-s{s}" / "result.json") for s in (0, 1, 2)]
    objectives = [float(np.mean(list(r["eval"].values()))) for r in base]
    assert list(figures["seed_spread"]["objective_per_seed"].values()) == pytest.approx(objectives)
    assert len(set(objectives)) == 3  # the seeds really differ
    assert figures["seed_spread"]["std"] == pytest.approx(np.std(objectives, ddof=1))
    # (c) two complete sweeps (2 domains: 2 x 2 + 1 runs each); seed 2 trains its base run only
    ddo = [json.loads((out / f"seed{s}" / "mixture.json").read_text()) for s in (0, 1)]
    assert figures["ddo"]["weights"] == {"0": pytest.approx(ddo[0]["weights"]),
                                         "1": pytest.approx(ddo[1]["weights"])}
    assert figures["ddo"]["max_abs_weight_difference"] == pytest.approx(
        max(abs(ddo[0]["weights"][d] - ddo[1]["weights"][d]) for d in ("code", "docstrings")))
    assert not (out / "seed2" / "mixture.json").exists()
    assert figures["runs"] == 5 + 5 + 1
    # (b) from the halves every base run records; one eval set for all 11 runs
    halves = [abs(np.mean(list(h0.values())) - np.mean(list(h1.values())))
              / ((np.mean(list(h0.values())) + np.mean(list(h1.values()))) / 2)
              for h0, h1 in (r["eval_halves"] for r in base)]
    assert figures["eval_halves"]["runs"] == 3
    assert figures["eval_halves"]["mean"] == pytest.approx(np.mean(halves))
    assert figures["eval_halves"]["max"] == pytest.approx(max(halves))
    assert figures["eval_halves"]["ratio_to_seed_spread"] == pytest.approx(
        np.mean(halves) / figures["seed_spread"]["relative_std"])
    assert figures["eval_set"]["fingerprint"] == base[0]["eval_set"]["fingerprint"]
    assert {r["eval_set"]["fingerprint"] for r in base} == {figures["eval_set"]["fingerprint"]}
    assert figures["eval_time_share"]["runs"] == 11
    assert 0 < figures["eval_time_share"]["mean"] < 1
    assert "(c) DDO at 2.05K tokens" in first.stdout and "seed spread (relative std)" in first.stdout

    again = _run(config, out)
    assert again.returncode == 0, again.stderr[-3000:]
    # Every run was reused: neither a sweep run nor a base run trained again.
    assert "training in this process" not in again.stderr, again.stderr[-3000:]
    assert "training the base mixture" not in again.stderr
    assert "training the base mixture" in first.stderr  # (the message this checks for exists)
    assert json.loads((out / "noise.json").read_text()) == figures
