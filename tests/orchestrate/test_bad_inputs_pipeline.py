"""Bad sweep and pipeline configs, replayed as a user would meet them (issue 11).

Each is refused before the first proxy run: exit 2, one ``autoscale: error:`` line naming
the config file and the field, no traceback, no run directory. A pipeline that fails after
its sweeps leaves the previous outputs as they were; one that succeeds replaces them as a
set (no export or mixture of an earlier target left beside the new report).
"""

import json
import time
from pathlib import Path

import pytest
import yaml

from badinput import REPO, assert_clean_failure, refuses, run_command, snapshot

DOMAINS = ["code", "docstrings"]
TRAIN = {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8,
         "eval_samples_per_domain": 4, "eval_interval_steps": 4}
SLOW_BUDGETS = [20_000_000, 40_000_000]  # hours of proxy training on a CPU: must never start
ENV = {"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "MPLBACKEND": "Agg"}


def _write(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def _pipeline(prepared, tmp_path, **changes) -> Path:
    settings = {"manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(tmp_path / "out"),
                "budgets": SLOW_BUDGETS, "target_tokens": 400_000_000, "domains": DOMAINS,
                "seeds": [0, 1], "train": TRAIN, "executor": {"kind": "inprocess"},
                "ddo": {"sensitivity_draws": 10}, "predict": {"floor": {"*": 0.05}},
                "export": {"formats": ["megatron", "hf"]}}
    settings.update(changes)
    return _write(tmp_path / "pipeline.yaml", settings)


def _sweep(prepared, tmp_path, **changes) -> Path:
    settings = {"manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(tmp_path / "sweep"),
                "budget_tokens": SLOW_BUDGETS[0], "domains": DOMAINS, "seeds": [0, 1],
                "train": TRAIN, "executor": {"kind": "inprocess"}}
    settings.update(changes)
    return _write(tmp_path / "sweep.yaml", settings)


def _refused_before_any_run(argv, config: Path, out: Path, names, prog="autoscale"):
    """Refused within seconds (training at SLOW_BUDGETS takes hours) and nothing made."""
    started = time.monotonic()
    line = refuses(argv, names=[config, *names], inputs=[config], prog=prog)
    assert time.monotonic() - started < 60, "the refusal came after work was done"
    assert not out.exists(), f"{out} was created: a run started before the config was checked"
    return line


# Item 1: every section is checked before the first proxy run, not after the sweeps.
PIPELINE_CASES = {
    "ddo typo": ({"ddo": {"max_ratoi": 3}}, ["ddo.max_ratoi", "max_ratio"]),
    "predict floors typo": ({"predict": {"floors": {"*": 0.02}}}, ["predict.floors", "floor"]),
    "predict floor not a number": ({"predict": {"floor": "abc"}}, ["predict.floor", "'abc'"]),
    "predict floor unknown domain": ({"predict": {"floor": {"web": 0.1}}}, ["predict.floor.web"]),
    "floors sum above one": ({"predict": {"floor": {"*": 0.6}}}, ["predict.floor", "sum to 1.2"]),
    "max_epochs leaves the target unfillable": (
        {"predict": {"max_epochs": 1}}, ["predict.ceiling", "max_epochs"]),
    "max change below one": ({"predict": {"max_change_per_doubling": 0.5}},
                             ["predict.max_change_per_doubling"]),
    "unknown export format": ({"export": {"formats": ["megatron", "bogus"]}},
                              ["export.formats", "'bogus'"]),
    "export data_paths missing": ({"export": {"formats": ["hf"], "data_paths": "nowhere.yaml"}},
                                  ["export.data_paths", "nowhere.yaml"]),
    "target not a count": ({"target_tokens": "lots"}, ["target_tokens", "'lots'"]),
    "target below the budgets": ({"target_tokens": 1_000_000}, ["target_tokens", "largest proxy budget"]),
    "seeds not a list": ({"seeds": 5}, ["seeds", "got 5"]),
    "ratio not a number": ({"ratios": ["x", 3]}, ["ratios", "'x'"]),
    "train not a mapping": ({"train": "abc"}, ["train", "'abc'"]),
    "train typo": ({"train": dict(TRAIN, learning_rat=0.1)}, ["train.learning_rat", "learning_rate"]),
    "sensitivity draws of one": ({"ddo": {"sensitivity_draws": 1}}, ["ddo.sensitivity_draws"]),
    "bad executor": ({"executor": {"kind": "cloud"}}, ["executor", "'cloud'"]),
}


@pytest.mark.parametrize("case", sorted(PIPELINE_CASES))
def test_a_bad_pipeline_setting_is_refused_before_the_first_proxy_run(prepared, tmp_path, case):
    changes, names = PIPELINE_CASES[case]
    config = _pipeline(prepared, tmp_path, **changes)
    _refused_before_any_run(["pipeline", "--config", config], config, tmp_path / "out", names)


def test_every_problem_of_a_pipeline_config_is_named_at_once(prepared, tmp_path):
    config = _pipeline(prepared, tmp_path, ddo={"max_ratoi": 3}, predict={"floor": "abc"},
                       export={"formats": ["bogus"]}, seeds=5)
    _refused_before_any_run(["pipeline", "--config", config], config, tmp_path / "out",
                            ["ddo.max_ratoi", "predict.floor", "export.formats", "seeds"])


@pytest.mark.parametrize("override, names", [
    ('predict={floors: {"*": 0.02}}', ["predict.floors"]),
    ("predict={floor: abc}", ["predict.floor"]),
    ("target_tokens=10X", ["target_tokens", "10X"]),
])
def test_a_bad_set_override_is_refused_before_the_first_proxy_run(prepared, tmp_path, override, names):
    config = _pipeline(prepared, tmp_path)
    _refused_before_any_run(["pipeline", "--config", config, "--set", override], config,
                            tmp_path / "out", names)


# Items 4, 5 and 8 (sweep part): one clear line, no traceback, no run.
SWEEP_CASES = {
    "train not a mapping": ({"train": "abc"}, ["train", "'abc'"]),
    "seeds not a list": ({"seeds": 5}, ["seeds", "got 5"]),
    "ratio not a number": ({"ratios": ["x"]}, ["ratios", "'x'"]),
    "budget not a count": ({"budget_tokens": "big"}, ["budget_tokens", "'big'"]),
    "ddo typo": ({"ddo": {"noise_sigm": 0.1}}, ["ddo.noise_sigm", "noise_sigma"]),
    "ddo bounds of an unknown domain": ({"ddo": {"ratio_bounds": {"web": [0.5, 2]}}},
                                        ["ddo.ratio_bounds.web"]),
    "retry_failed not a boolean": ({"retry_failed": "yes please"}, ["retry_failed"]),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
@pytest.mark.parametrize("entry", ["autoscale", "launchers/ddo.py"])
def test_a_bad_sweep_setting_is_refused_before_the_first_run(prepared, tmp_path, case, entry):
    changes, names = SWEEP_CASES[case]
    config = _sweep(prepared, tmp_path, **changes)
    argv, prog = ((["ddo-run", "--config", config], "autoscale") if entry == "autoscale"
                  else ([REPO / "launchers" / "ddo.py", "--config", config], "ddo-run"))
    _refused_before_any_run(argv, config, tmp_path / "sweep", names, prog=prog)


@pytest.mark.parametrize("where", ["file", "under a file"])
@pytest.mark.parametrize("command", ["ddo-run", "pipeline"])
def test_an_output_dir_that_is_a_file_is_one_clear_line(prepared, tmp_path, where, command):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a directory\n")
    out = blocker if where == "file" else blocker / "sweep"
    config = (_sweep(prepared, tmp_path, output_dir=str(out)) if command == "ddo-run"
              else _pipeline(prepared, tmp_path, output_dir=str(out)))
    refuses([command, "--config", config], names=[config, "output_dir", blocker, "not a directory"],
            inputs=[config, blocker])


def test_a_sweep_config_giving_a_key_twice_is_refused(prepared, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"manifest: {prepared.root / 'manifest.yaml'}\noutput_dir: {tmp_path / 'a'}\n"
                      f"budget_tokens: 6144\noutput_dir: {tmp_path / 'b'}\n")
    refuses(["ddo-run", "--config", config], names=[config, "output_dir"], inputs=[config])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# Item 3: outputs of one pipeline run are consistent or not written.


def _export_weights(out: Path, fmt: str, manifest: Path) -> dict:
    from autoscale_ds.formats.export import load_data_paths, parse_export

    weights = parse_export((out / "exports" / f"{fmt}.txt").read_text(), fmt, load_data_paths(manifest))
    return {d: w for d, w in weights.items() if w > 0}


@pytest.mark.slow
@pytest.mark.e2e
def test_a_failed_rerun_keeps_the_outputs_and_a_good_one_replaces_them_as_a_set(prepared, tmp_path):
    manifest = prepared.root / "manifest.yaml"
    out = tmp_path / "out"
    config = _pipeline(prepared, tmp_path, budgets=[3072, 6144], target_tokens=50_000, seeds=[0],
                       ddo={"sensitivity_draws": 0},
                       export={"formats": ["megatron", "gpt-neox", "hf"]})
    first = run_command(["pipeline", "--config", config], cwd=REPO, env=ENV, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot([out])

    # The repro: a new target and an export list with an unknown format.
    failed = run_command(["pipeline", "--config", config, "--set", "target_tokens=100000", "--set",
                          "export={formats: [megatron, hf, bogus, gpt-neox]}"], cwd=REPO, env=ENV)
    assert snapshot([out]) == before, "a refused run changed the outputs of the previous one"
    assert_clean_failure(failed, names=[config, "export.formats", "bogus"])

    # A good rerun for another target and fewer formats: the old target's files are gone.
    again = run_command(["pipeline", "--config", config, "--set", "target_tokens=100K",
                         "--set", "export={formats: [hf, megatron]}"], cwd=REPO, env=ENV, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in out.glob("mixture_*.json")) == ["mixture_100K.json"]
    assert sorted(p.name for p in (out / "exports").iterdir()) == ["hf.txt", "megatron.txt"]
    mixture = json.loads((out / "mixture_100K.json").read_text())
    assert mixture["total_tokens"] == 100_000
    for fmt in ("hf", "megatron"):
        exported = _export_weights(out, fmt, manifest)
        assert exported == pytest.approx(mixture["weights"], abs=1e-12), fmt
    report = (out / "report.md").read_text()
    assert "AutoScale @100K" in report and "50K" not in report
    assert "`gpt-neox`" not in report and "`hf`: `exports/hf.txt`" in report
    assert not (out / ".staging").exists()
    assert "training in this process" not in again.stderr  # the sweeps were reused
