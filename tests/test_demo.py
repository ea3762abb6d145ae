"""The README's first command, `bash scripts/demo.sh`, at a tiny size (the install step is
what `scripts/test.sh` already did for this venv)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoscale_ds.data.builtin_corpus import BUILTIN_DOMAINS, size_rule_problems
from autoscale_ds.formats.manifest import load_manifest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_NAMES = [d.name for d in BUILTIN_DOMAINS]
TINY = ["--set", "budgets=[3000, 6000]", "--set", "target_tokens=30000",
        "--set", "train={model_size: tiny, seq_len: 32, micro_batch_size: 8, global_batch_size: 8, "
                 "eval_samples_per_domain: 4, eval_interval_steps: 4}"]


def test_demo_script_runs_the_whole_pipeline_on_the_builtin_corpus(tmp_path):
    if not (Path(sys.prefix) / "bin" / "autoscale").exists():
        pytest.skip("the autoscale console script is not installed in this venv")
    out = tmp_path / "demo"
    env = dict(os.environ, AUTOSCALE_SKIP_INSTALL="1", AUTOSCALE_VENV=sys.prefix)
    result = subprocess.run(["bash", "scripts/demo.sh", str(out), *TINY], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    announced = dict(line.split(":", 1) for line in result.stdout.splitlines()
                     if line.startswith(("mixture:", "report:")))
    mixture = json.loads(Path(announced["mixture"].strip()).read_text())
    assert mixture["method"] == "autoscale" and mixture["total_tokens"] == 30000
    assert set(mixture["weights"]) == set(BUILTIN_NAMES)
    report = Path(announced["report"].strip())
    assert report.exists() and (report.parent / "weights.png").exists()
    for fmt in ("megatron", "megatron-deepspeed", "gpt-neox", "hf"):
        assert (out / "autoscale" / "exports" / f"{fmt}.txt").exists(), fmt
    # One progress line per proxy run: 2 budgets x (2 base seeds + 6 domains x 2 ratios).
    assert result.stderr.count("runs done") == 28
    _assert_real_build_meets_the_size_rules(out / "prepared")


def _assert_real_build_meets_the_size_rules(prepared: Path):
    """The full built-in corpus serves the demo's real target from fresh tokens, even at a
    weight of 0.5 for one domain, and holds out >= 64K tokens per domain."""
    target = yaml.safe_load((ROOT / "examples" / "demo_pipeline.yaml").read_text())["target_tokens"]
    manifest = load_manifest(prepared / "manifest.yaml")
    assert set(manifest.domains) == set(BUILTIN_NAMES)
    assert size_rule_problems(manifest, target, max_weight=0.5, min_valid_tokens=65_536) == []
