"""Issue 11 replays for the ``autoscale`` CLI (ddo, predict, export, plot, --set, configs).

Each case runs the command as a user would (a subprocess) and checks it failed cleanly:
exit 2, one ``autoscale: error:`` line naming the file / flag / field, no traceback, and
every input byte-for-byte as it was (see tests/badinput.py).
"""

import json
import os

import pytest
import yaml

from autoscale_ds.cli import main

from badinput import REPO, refuses, run_command, snapshot
from synthetic import make_runs

DOMAINS = ["web", "code", "books"]
TRAIN_LAUNCHER = str(REPO / "launchers" / "train.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two runs files (two eval domains), their DDO mixtures and a data-paths map."""
    d = tmp_path_factory.mktemp("bad_inputs_cli")
    for name, base in (("small", 1e5), ("large", 3e5)):
        payload = make_runs(DOMAINS, [0.5, 1.0, 0.2], [0.8, 0.5, 1.2], [base] * 3)
        for run in payload["runs"]:
            held_out = run["eval"].pop("held_out")
            run["eval"] = {"web": held_out, "code": 1.1 * held_out}
        (d / f"runs_{name}.json").write_text(json.dumps(payload, indent=1))
        assert main(["ddo", "--runs", str(d / f"runs_{name}.json"), "--out",
                     str(d / f"m_{name}.json"), "--sensitivity-draws", "0"]) == 0
    (d / "paths.yaml").write_text(yaml.safe_dump({k: f"/data/{k}_text_document" for k in DOMAINS}))
    (d / "a_dir").mkdir()
    (d / "a_file").write_text("not a directory\n")
    return d


def _ddo(files, *extra):
    return ["ddo", "--runs", files / "runs_small.json", *extra]


def _predict(files, *extra):
    return ["predict", "--mixture", files / "m_small.json", "--mixture", files / "m_large.json",
            *extra]


# ------------------------------------------- item 2: an output that is an input is refused


@pytest.mark.parametrize("spelling", ["same", "dot-dot", "symlink", "hard link"])
def test_ddo_out_equal_to_the_runs_file_is_refused(files, tmp_path, spelling):
    runs = tmp_path / "runs.json"
    runs.write_bytes((files / "runs_small.json").read_bytes())
    out = {"same": runs, "dot-dot": tmp_path / "missing" / ".." / "runs.json",
           "symlink": tmp_path / "link.json", "hard link": tmp_path / "hard.json"}[spelling]
    if spelling == "symlink":
        out.symlink_to(runs)
    if spelling == "hard link":
        os.link(runs, out)
    refuses(["ddo", "--runs", runs, "--out", out], names=["--out", str(out), "runs.json"],
            inputs=[runs])
    assert not (tmp_path / "missing").exists()


def test_predict_out_equal_to_a_mixture_is_refused(files):
    refuses(_predict(files, "--target-tokens", "10M", "--out", files / "m_large.json"),
            names=["--out", "m_large.json"], inputs=[files])


@pytest.mark.parametrize("which", ["m_small.json", "paths.yaml"])
def test_export_out_equal_to_an_input_is_refused(files, which):
    refuses(["export", files / "m_small.json", "--format", "megatron", "--data-paths",
             files / "paths.yaml", "--out", files / which], names=["--out", which], inputs=[files])


# ------------------------------------------- item 4: OS errors on paths are one clear line


@pytest.mark.parametrize("command", ["ddo", "export"])
def test_out_that_is_a_directory_is_refused(files, command):
    argv = (_ddo(files) if command == "ddo" else
            ["export", files / "m_small.json", "--format", "megatron", "--data-paths",
             files / "paths.yaml"])
    refuses(argv + ["--out", files / "a_dir"], names=["--out", "a_dir", "directory"],
            inputs=[files])


def test_out_under_a_file_is_refused(files):
    refuses(_ddo(files, "--out", files / "a_file" / "m.json"),
            names=["--out", "a_file", "not a directory"], inputs=[files])


def test_plot_out_dir_that_is_a_file_is_refused(files):
    refuses(["plot", files / "m_small.json", "--out-dir", files / "a_file"],
            names=["--out-dir", "a_file", "not a directory"], inputs=[files])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("command", ["ddo", "predict", "export", "plot"])
def test_an_output_the_os_will_not_create_is_one_line(files, command):
    # /proc refuses new files even to root: the write itself fails, late, with an OSError.
    target = "/proc/self/autoscale_out"
    argv = {"ddo": _ddo(files, "--out", target),
            "predict": _predict(files, "--steps", "1", "--out", target),
            "export": ["export", files / "m_small.json", "--format", "megatron",
                       "--data-paths", files / "paths.yaml", "--out", target],
            "plot": ["plot", files / "m_small.json", "--out-dir", target]}[command]
    flag = "--out-dir" if command == "plot" else "--out"
    refuses(argv, names=[flag, target, "cannot write"], inputs=[files])


@pytest.mark.parametrize("command", ["ddo", "predict", "plot", "pipeline"])
def test_a_directory_given_as_the_input_file_is_refused(files, tmp_path, command):
    folder = files / "a_dir"
    argv = {"ddo": ["ddo", "--runs", folder, "--out", tmp_path / "m.json"],
            "predict": ["predict", "--mixture", folder, "--mixture", files / "m_large.json",
                        "--steps", "1", "--out", tmp_path / "m.json"],
            "plot": ["plot", folder, "--out-dir", tmp_path / "plots"],
            "pipeline": ["pipeline", "--config", folder]}[command]
    refuses(argv, names=["a_dir", "is a directory"], inputs=[files])
    assert not list(tmp_path.iterdir())


def test_an_unreadable_input_file_is_refused(files, tmp_path):
    runs = tmp_path / "runs.json"
    runs.write_bytes((files / "runs_small.json").read_bytes())
    runs.chmod(0)
    try:
        refuses(["ddo", "--runs", runs, "--out", tmp_path / "m.json"],
                names=["runs.json", "permission denied"], file_permissions_bind=True)
    finally:
        runs.chmod(0o644)


# ------------------------------------------------- item 5: --set and --available-tokens


@pytest.mark.parametrize("command", ["pipeline", "ddo-run", "train"])
def test_a_set_value_that_is_not_yaml_is_one_line(files, command):
    config = files / "a_file"  # never read: the --set value fails first
    argv = ([TRAIN_LAUNCHER] if command == "train" else [command]) + \
        ["--config", config, "--set", "predict={a: [1"]
    refuses(argv, names=["--set", "predict={a: [1", "column"], inputs=[files],
            prog="train" if command == "train" else "autoscale")


@pytest.mark.parametrize("value", ["abc", "", "-5", "10X", "1e999"])
def test_available_tokens_must_be_a_token_count(files, tmp_path, value):
    refuses(_ddo(files, "--out", tmp_path / "m.json", "--available-tokens", f"web={value}"),
            names=["--available-tokens", "web"], inputs=[files])


def test_a_bad_flag_value_is_one_line_too(files, tmp_path):
    refuses(_predict(files, "--target-tokens", "lots", "--out", tmp_path / "m.json"),
            names=["--target-tokens", "lots"], inputs=[files])


# ------------------------------------------------------- item 8: duplicate keys are refused


def test_a_runs_file_with_a_key_given_twice_is_refused(files, tmp_path):
    text = (files / "runs_small.json").read_text()
    runs = tmp_path / "runs.json"
    runs.write_text(text.replace('"metric": "perplexity"', '"metric": "perplexity", "metric": "loss"'))
    refuses(["ddo", "--runs", runs, "--out", tmp_path / "m.json"],
            names=["runs.json", "duplicate key", "metric"], inputs=[runs])


def test_a_mixture_with_a_domain_given_twice_is_refused(files, tmp_path):
    mixture = tmp_path / "m.json"
    mixture.write_text((files / "m_small.json").read_text().replace(
        '"weights": {', '"weights": {\n    "web": 0.5,', 1))
    refuses(["predict", "--mixture", mixture, "--mixture", files / "m_large.json", "--steps", "1",
             "--out", tmp_path / "p.json"], names=["m.json", "duplicate key", "web"],
            inputs=[mixture])


@pytest.mark.parametrize("command", ["pipeline", "ddo-run", "train"])
def test_a_yaml_config_with_a_key_given_twice_is_refused(tmp_path, command):
    config = tmp_path / "config.yaml"
    config.write_text("manifest: prepared/manifest.yaml\noutput_dir: out_a\n"
                      "seeds: [0, 1]\noutput_dir: out_b\n")
    argv = ([TRAIN_LAUNCHER] if command == "train" else [command]) + ["--config", config]
    line = refuses(argv, names=[f"{config}:4:1", "duplicate key", "output_dir", "line 2"],
                   inputs=[tmp_path], prog="train" if command == "train" else "autoscale")
    assert not (tmp_path / "out_a").exists() and not (tmp_path / "out_b").exists(), line


# --------------------------------------------------------- item 12: eval weights are checked


@pytest.mark.parametrize("weights, names", [
    (["web=-1", "code=1"], ["eval weight", "'web'", ">= 0"]),  # was a ZeroDivisionError
    (["web=-1", "code=3"], ["eval weight", "'web'", ">= 0"]),  # was silently accepted
    (["web=0", "code=0"], ["eval weights", "at least one > 0"]),
    (["web=nan"], ["--eval-weight", "nan"]),
    (["web=1", "web=2"], ["--eval-weight", "'web'", "twice"]),
    (["wbe=1"], ["eval weight", "'wbe'", "code", "web"]),
])
def test_eval_weights_are_checked(files, tmp_path, weights, names):
    flags = [arg for weight in weights for arg in ("--eval-weight", weight)]
    refuses(_ddo(files, "--out", tmp_path / "m.json", *flags), names=names, inputs=[files])
    assert not (tmp_path / "m.json").exists()


# ------------------------------------------------ item 13: huge targets are exact or refused


@pytest.mark.parametrize("target, exact", [("1e19", 10**19), ("1e20", 10**20), ("1e30", 10**30),
                                           ("12345678901234567890123", 12345678901234567890123),
                                           ("1e300", 10**300)])
def test_a_huge_target_gives_exactly_that_many_tokens(files, tmp_path, target, exact):
    out = tmp_path / "m.json"
    before = snapshot([files])
    result = run_command(_predict(files, "--target-tokens", target, "--out", out))
    assert result.returncode == 0 and "RuntimeWarning" not in result.stderr, result.stderr
    mixture = json.loads(out.read_text())
    assert mixture["total_tokens"] == exact
    assert sum(mixture["tokens"].values()) == exact
    assert all(isinstance(n, int) and n > 0 for n in mixture["tokens"].values())
    assert snapshot([files]) == before


def test_a_target_beyond_float_range_is_refused(files, tmp_path):
    refuses(_predict(files, "--target-tokens", "1e400", "--out", tmp_path / "m.json"),
            names=["--target-tokens", "too large"], inputs=[files])


def test_steps_beyond_float_range_are_refused(files, tmp_path):
    refuses(_predict(files, "--steps", "1e6", "--out", tmp_path / "m.json"),
            names=["floating-point range"], inputs=[files])


# ----------------------------------------------------------- item 15: YAML numbers, messages


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("manifest: prepared/manifest.yaml\nbudgets: [1M, 2M\ntarget_tokens: 10M\n")
    refuses(["pipeline", "--config", config], names=[f"{config}:3:", "flow sequence", "line 2"],
            inputs=[tmp_path])


def test_a_learning_rate_written_1e_3_is_a_number(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("manifest: prepared/manifest.yaml\noutput_dir: out\nrun_id: r\n"
                      "learning_rate: 1e-3\nmin_lr_ratio: 2\n")
    line = refuses([TRAIN_LAUNCHER, "--config", config], names=["min_lr_ratio"],
                   inputs=[tmp_path], prog="train")
    assert "learning_rate must" not in line and "1e-3" not in line  # (the tmp path has the name)
