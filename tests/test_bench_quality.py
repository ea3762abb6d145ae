"""bench/quality.py end to end at a tiny size: every arm trains over seeds, the figures and
the plot are written, and a rerun reuses the finished runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _run(config: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--config", str(config),
                           "--seeds", "2", "--evals", "3", "--direct-ddo", "--out", str(out)],
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
    assert arms == ["uniform", "tokens", "ddo@6.14K", "autoscale",
                    *(["autoscale-unheld"] if held else []), "ddo@12.3K"]
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
    # Seeds differ (init and order) while one seed gives every arm the same start.
    uniform = [json.loads((out / "arms" / "uniform" / f"seed{s}" / "result.json").read_text())
               for s in (0, 1)]
    assert uniform[0]["runs"][0]["eval"] != uniform[1]["runs"][0]["eval"]

    again = _run(config, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stderr.replace("training in this process", "")
    assert json.loads((out / "quality.json").read_text()) == results
