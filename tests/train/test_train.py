"""The DeepSpeed training loop on real text, on CPU: 1 and 2 processes, ZeRO 0-3, resume,
exact budgets, recorded failures, config errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("deepspeed")
pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "launchers" / "train.py")
SEQ_LEN = 32


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def kill_train_when(config_path, marker: Path) -> None:
    """Start launchers/train.py on ``config_path`` and SIGKILL it as soon as ``marker`` exists
    (a checkpoint, a branch point): a crash at a chosen moment, for the resume tests."""
    process = subprocess.Popen([sys.executable, TRAIN, "--config", str(config_path)], env=_env(),
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _config(tmp_path, prepared, name="run", **overrides):
    config = {
        "manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(tmp_path / name),
        "run_id": name, "seq_len": SEQ_LEN, "micro_batch_size": 4, "global_batch_size": 8,
        "tokens_per_domain": {"code": 12 * SEQ_LEN, "docstrings": 20 * SEQ_LEN,
                              "comments": 8 * SEQ_LEN, "reference": 8 * SEQ_LEN},
        "learning_rate": 3e-3, "eval_samples_per_domain": 4, "progress": False,
        "monitor": ["csv"],
    }
    config.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config_path, launcher=(), timeout=300, check=True):
    result = subprocess.run([*launcher, TRAIN, "--config", str(config_path)], env=_env(),
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def _row(config_path):
    output_dir = Path(yaml.safe_load(Path(config_path).read_text())["output_dir"])
    payload = json.loads((output_dir / "result.json").read_text())
    assert payload["schema"] == "autoscale.runs/v1"
    return payload["runs"][0]


def _torchrun(nproc):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def test_single_process_trains_exact_budget_and_writes_a_runs_row(tmp_path, prepared):
    pytest.importorskip("tensorboard")
    config = _config(tmp_path, prepared, monitor=["csv", "tensorboard"])
    _train(config, launcher=[sys.executable])
    row = _row(config)
    assert row["status"] == "ok"
    assert row["train_tokens"] == {"code": 12 * SEQ_LEN, "docstrings": 20 * SEQ_LEN,
                                   "comments": 8 * SEQ_LEN, "reference": 8 * SEQ_LEN}
    assert row["steps"] == row["planned_steps"] == 6
    assert set(row["eval"]) == {"code", "docstrings", "comments", "reference"}
    assert all(1.0 < v < 1e4 for v in row["eval"].values())
    assert row["step_losses"][-1] < row["step_losses"][0]  # it learns
    monitor = tmp_path / "run" / "monitor"
    assert {"Train_loss.csv", "Train_loss_code.csv", "Eval_ppl_code.csv"} <= \
        {f.name for f in monitor.rglob("*.csv")}
    assert list(monitor.rglob("events.out.tfevents.*"))  # TensorBoard


def test_two_processes_match_one_process(tmp_path, prepared):
    one = _config(tmp_path, prepared, "one", micro_batch_size=4, global_batch_size=8)
    two = _config(tmp_path, prepared, "two", micro_batch_size=4, global_batch_size=8)
    _train(one, launcher=[sys.executable])
    _train(two, launcher=_torchrun(2))
    a, b = _row(one), _row(two)
    assert a["train_tokens"] == b["train_tokens"]
    for domain, loss in a["eval_loss"].items():
        assert b["eval_loss"][domain] == pytest.approx(loss, rel=1e-3)
    assert b["step_losses"] == pytest.approx(a["step_losses"], rel=1e-3)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_train(tmp_path, prepared, stage):
    config = _config(tmp_path, prepared, f"zero{stage}", zero_stage=stage,
                     tokens_per_domain={"code": 8 * SEQ_LEN, "docstrings": 8 * SEQ_LEN})
    _train(config, launcher=[sys.executable])
    row = _row(config)
    assert row["status"] == "ok" and row["steps"] == 2


def test_ds_config_file_is_used(tmp_path, prepared):
    config = _config(tmp_path, prepared, "dsfile", ds_config=str(ROOT / "ds_configs" / "zero2.json"),
                     tokens_per_domain={"code": 8 * SEQ_LEN, "docstrings": 8 * SEQ_LEN})
    _train(config, launcher=[sys.executable])
    assert _row(config)["status"] == "ok"


def test_killed_run_resumes_to_the_same_losses(tmp_path, prepared):
    budget = {"code": 60 * SEQ_LEN, "docstrings": 60 * SEQ_LEN, "comments": 40 * SEQ_LEN}
    whole = _config(tmp_path, prepared, "whole", tokens_per_domain=budget, checkpoint_interval_steps=5)
    _train(whole, launcher=[sys.executable])
    expected = _row(whole)["step_losses"]
    assert len(expected) == 20
    cut = _config(tmp_path, prepared, "cut", tokens_per_domain=budget, checkpoint_interval_steps=5)
    kill_train_when(cut, tmp_path / "cut" / "checkpoints" / "latest")
    assert not (tmp_path / "cut" / "result.json").exists()
    _train(cut, launcher=[sys.executable])
    row = _row(cut)
    assert row["steps"] == 20
    assert row["step_losses"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_masked_lm_trains(tmp_path, prepared):
    config = _config(tmp_path, prepared, "bert", model_family="bert", model_size="tiny",
                     tokens_per_domain={"code": 8 * SEQ_LEN, "docstrings": 8 * SEQ_LEN})
    _train(config, launcher=[sys.executable])
    row = _row(config)
    assert row["status"] == "ok" and all(v > 1 for v in row["eval"].values())


def test_exploding_loss_is_a_recorded_failure(tmp_path, prepared):
    config = _config(tmp_path, prepared, "boom", learning_rate=50.0, warmup_fraction=0.0,
                     gradient_clipping=0.0, divergence_factor=1.5)
    result = _train(config, launcher=[sys.executable], check=False)
    assert result.returncode == 3, result.stderr[-3000:]
    row = _row(config)
    assert row["status"] == "failed" and ("diverged" in row["reason"] or "loss became" in row["reason"])
    assert row["eval"] == {}


def test_bad_config_reports_every_problem_at_once(tmp_path, prepared):
    config = _config(tmp_path, prepared, "bad", seq_len=0, model_size="huge", zero_stage=5,
                     learning_rate=-1)
    result = _train(config, launcher=[sys.executable], check=False)
    assert result.returncode == 2
    for fragment in ("seq_len", "gpt2 size must be one of", "zero_stage", "learning_rate"):
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr and "train: error:" in result.stderr


def test_unknown_domain_and_unknown_setting_are_named(tmp_path, prepared):
    config = _config(tmp_path, prepared, "odd", tokens_per_domain={"poetry": 1000})
    result = _train(config, launcher=[sys.executable], check=False)
    assert result.returncode == 2 and "'poetry'" in result.stderr
    typo = _config(tmp_path, prepared, "typo", learning_rat=0.1)
    result = _train(typo, launcher=[sys.executable], check=False)
    assert result.returncode == 2 and "learning_rat" in result.stderr


def _truncate_model_states(tag_dir: Path) -> Path:
    path = tag_dir / "mp_rank_00_model_states.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # as when the disk filled during the save
    return path


def test_truncated_latest_checkpoint_falls_back_to_the_one_before(tmp_path, prepared):
    budget = {"code": 16 * SEQ_LEN, "docstrings": 16 * SEQ_LEN, "comments": 16 * SEQ_LEN}
    config = _config(tmp_path, prepared, "ckpt", tokens_per_domain=budget, checkpoint_interval_steps=2)
    _train(config, launcher=[sys.executable])
    expected = _row(config)["step_losses"]
    checkpoints = tmp_path / "ckpt" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000006"
    damaged = _truncate_model_states(checkpoints / "step_00000006")
    (tmp_path / "ckpt" / "result.json").unlink()
    result = _train(config, launcher=[sys.executable])
    assert f"checkpoint {checkpoints / 'step_00000006'} is unreadable" in result.stderr
    assert str(damaged) in result.stderr  # the warning names the damaged file
    assert "resumed from step 4" in result.stderr
    row = _row(config)
    assert row["steps"] == 6 and row["step_losses"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_no_readable_checkpoint_is_a_clear_error_naming_the_files(tmp_path, prepared):
    budget = {"code": 8 * SEQ_LEN, "docstrings": 8 * SEQ_LEN}
    config = _config(tmp_path, prepared, "ckpt2", tokens_per_domain=budget, checkpoint_interval_steps=1)
    _train(config, launcher=[sys.executable])
    checkpoints = tmp_path / "ckpt2" / "checkpoints"
    damaged = [_truncate_model_states(tag) for tag in sorted(checkpoints.glob("step_*"))]
    assert len(damaged) == 2
    (tmp_path / "ckpt2" / "result.json").unlink()
    result = _train(config, launcher=[sys.executable], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("train: error:")]
    assert len(line) == 1 and all(str(path) in line[0] for path in damaged), line
    assert f"delete {checkpoints}" in line[0]


def _ds_settings(tmp_path, settings, **config):
    from autoscale_ds.train.config import TrainConfig
    from autoscale_ds.train.plan import derive_batch_triple
    from autoscale_ds.train.trainer import build_ds_config

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(settings))
    run = TrainConfig(manifest="m", output_dir=str(tmp_path / "out"), tokens_per_domain={"a": 64},
                      ds_config=str(path), **config)
    return build_ds_config(run, derive_batch_triple(8, 4, 1), on_gpu=False)


def test_overridden_ds_config_keys_are_listed_in_one_warning(tmp_path, caplog):
    user = {"train_batch_size": 99, "train_micro_batch_size_per_gpu": 99, "gradient_clipping": 5.0,
            "optimizer": {"type": "Adam", "params": {"lr": 0.1}}, "scheduler": {"type": "WarmupLR"},
            "bf16": {"enabled": True}, "zero_optimization": {"stage": 2, "overlap_comm": True},
            "csv_monitor": {"enabled": False}, "wall_clock_breakdown": False}
    with caplog.at_level("WARNING", logger="autoscale_ds.train.trainer"):
        ds = _ds_settings(tmp_path, user, zero_stage=1, gradient_clipping=1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    for key in ("train_batch_size (99 -> 8)", "train_micro_batch_size_per_gpu (99 -> 4)",
                "gradient_clipping (5.0 -> 1.0)", "optimizer", "scheduler ({...} -> removed)",
                "bf16.enabled (true -> false)", "zero_optimization.stage (2 -> 1)",
                "csv_monitor.enabled (false -> true)"):
        assert key in warnings[0], key
    assert "gradient_accumulation_steps" not in warnings[0]  # the user did not set it
    assert ds["zero_optimization"] == {"stage": 1, "overlap_comm": True}  # other ZeRO keys kept
    assert ds["wall_clock_breakdown"] is False and "scheduler" not in ds


def test_ds_config_with_only_zero_settings_keeps_its_stage_without_a_warning(tmp_path, caplog):
    zero2 = json.loads((ROOT / "ds_configs" / "zero2.json").read_text())
    with caplog.at_level("WARNING", logger="autoscale_ds.train.trainer"):
        ds = _ds_settings(tmp_path, zero2)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert ds["zero_optimization"]["stage"] == 2


def test_deepspeed_flags_are_accepted_and_name_the_ds_config(tmp_path, prepared):
    config = _config(tmp_path, prepared, "dsflag", tokens_per_domain={"code": 8 * SEQ_LEN,
                                                                      "docstrings": 8 * SEQ_LEN})
    result = subprocess.run([sys.executable, TRAIN, "--config", str(config), "--deepspeed",
                             "--deepspeed_config", str(ROOT / "ds_configs" / "zero2_bf16_gpu.json")],
                            env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _row(config)["status"] == "ok"
    # A GPU config on CPU: its bf16 is replaced (fp32 here), and the one warning says so.
    warning = [ln for ln in result.stderr.splitlines() if "the run config decides" in ln]
    assert len(warning) == 1 and "bf16.enabled (true -> false)" in warning[0], result.stderr[-3000:]
