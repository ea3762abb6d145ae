"""`autoscale mix` for the closed-form methods, and its bad inputs: no training, a
hand-written manifest (only its token counts are read)."""

import json
import math

import pytest
import yaml

from autoscale_ds.cli import main
from autoscale_ds.errors import EXIT_INPUT_ERROR, InputError
from autoscale_ds.formats.schemas import load_mixture

TOKENS = {"web": 600_000, "code": 300_000, "wiki": 100_000}


@pytest.fixture
def manifest(tmp_path):
    domains = {d: {"train": {"prefix": f"{d}/train", "documents": 10, "tokens": n},
                   "valid": {"prefix": f"{d}/valid", "documents": 1, "tokens": 1000}}
               for d, n in TOKENS.items()}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"schema": "autoscale.domains/v1", "tokenizer": {"kind": "x"},
                                    "seed": 0, "valid_fraction": 0.1, "domains": domains}))
    return path


def _mix(argv, capsys):
    code = main(["mix", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _weights_of(path):
    mixture = load_mixture(path)  # the file round-trips through the strict reader
    assert mixture.provenance["proxy_tokens_trained"] == 0
    assert mixture.provenance["proxy_runs"] == 0
    assert sum(mixture.tokens.values()) == mixture.total_tokens
    return mixture


@pytest.mark.parametrize("method, flags, expected", [
    ("natural", [], {"web": 0.6, "code": 0.3, "wiki": 0.1}),
    ("temperature", ["--tau", "2"], {d: math.sqrt(n) / sum(math.sqrt(v) for v in TOKENS.values())
                                     for d, n in TOKENS.items()}),
    # 900K at 1 epoch: wiki capped at its 100K, code at its 300K (under 800K / 2), web the rest.
    ("unimax", ["--max-epochs", "1", "--target-tokens", "900K"],
     {"web": 500 / 900, "code": 300 / 900, "wiki": 100 / 900}),
])
def test_closed_form_methods_write_their_weights(manifest, tmp_path, capsys, method, flags, expected):
    out = tmp_path / f"{method}.json"
    code, stdout, err = _mix(["--method", method, "--manifest", manifest, "--out", out, *flags], capsys)
    assert code == 0, err
    mixture = _weights_of(out)
    assert mixture.method == method
    assert mixture.weights == pytest.approx(expected, abs=1e-12)
    assert f"mixture ({method})" in stdout


def test_temperature_defaults_to_tau_2_and_same_input_gives_same_bytes(manifest, tmp_path, capsys):
    first, second = tmp_path / "a" / "m.json", tmp_path / "b" / "m.json"
    for out in (first, second):
        assert _mix(["--method", "temperature", "--manifest", manifest, "--out", out,
                     "--domains", "web,code", "--output-dir", out.parent], capsys)[0] == 0
    assert first.read_bytes() == second.read_bytes()
    mixture = load_mixture(first)
    assert list(mixture.weights) == ["web", "code"]
    assert mixture.provenance["settings"]["tau"] == 2.0
    summary = json.loads((first.parent / "summary.json").read_text())
    assert summary["method"] == "temperature" and summary["proxy_tokens_trained"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--method", "remix"], "method: must be one of natural, temperature, unimax, doremi, regmix"),
    (["--method", "unimax", "--target-tokens", "5M", "--max-epochs", "2"],
     "UniMax cannot fill a budget of 5e+06 tokens"),
    (["--method", "unimax"], "target_tokens: unimax needs the training budget"),
    (["--method", "regmix"], "regmix.proxy_tokens: needed"),
    (["--method", "natural", "--set", "regmx={runs: 4}"], "regmx: unknown setting; did you mean regmix?"),
    (["--method", "natural", "--set", "regmix.rnus=4"], "regmix.rnus: unknown setting; did you mean runs?"),
    (["--method", "natural", "--domains", "web,books"], "domains: ['books'] are not in"),
])
def test_bad_inputs_are_one_line_and_exit_2(manifest, tmp_path, capsys, argv, message):
    code, _, err = _mix(["--manifest", manifest, "--out", tmp_path / "m.json", *argv], capsys)
    assert code == EXIT_INPUT_ERROR
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.json").exists()


def test_a_bad_config_file_names_every_problem_at_once(manifest, tmp_path, capsys):
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump({"manifest": str(manifest), "method": "regmix",
                                      "out": str(tmp_path / "m.json"), "taus": 2,
                                      "regmix": {"runs": 1, "proxy_tokens": "10K"}}))
    code, _, err = _mix(["--config", config], capsys)
    assert code == EXIT_INPUT_ERROR and len(err.strip().splitlines()) == 1
    for problem in ("taus: unknown setting; did you mean tau?", "regmix.runs: must be a whole "
                    "number >= 2", "output_dir: method regmix trains proxy runs"):
        assert problem in err


class _FakeExecutor:
    """Stands in for the proxy training: each run's loss is a known bowl over its mixture
    (lowest at 50 % web), ``failing`` runs fail, and every run handed over is listed."""

    def __init__(self, failing=()):
        self.failing, self.handed = set(failing), []

    def execute(self, runs, record):
        for run in runs:
            self.handed.append(run.run_id)
            tokens = dict(run.config.tokens_per_domain)
            if run.run_id in self.failing or "*" in self.failing:
                record(run, {"id": run.run_id, "train_tokens": tokens, "eval": {},
                             "status": "failed", "reason": "loss diverged", "failure_kind": "training"})
                continue
            share = tokens["web"] / sum(tokens.values())
            loss = {d: 3.0 + (share - 0.5) ** 2 for d in tokens}
            record(run, {"id": run.run_id, "train_tokens": tokens, "status": "ok", "steps": 2,
                         "eval": {d: math.exp(v) for d, v in loss.items()}, "eval_loss": loss})


def _regmix_settings(manifest, tmp_path):
    return {"manifest": str(manifest), "method": "regmix", "out": str(tmp_path / "m.json"),
            "output_dir": str(tmp_path / "work"), "train": {"seq_len": 32, "global_batch_size": 8},
            "regmix": {"runs": 12, "proxy_tokens": "5K", "folds": 3, "regressor": "ridge",
                       "candidates": 500, "top_k": 10}}


def test_regmix_leaves_failed_runs_out_of_the_fit_and_a_rerun_hands_over_nothing(manifest, tmp_path):
    from autoscale_ds.orchestrate.mix import run_mix
    from autoscale_ds.orchestrate.mix_config import mix_config_from

    config = mix_config_from(_regmix_settings(manifest, tmp_path))
    executor = _FakeExecutor(failing={"regmix-003"})
    result = run_mix(config, executor)
    assert len(executor.handed) == 12 and result.failed == ["regmix-003"]
    report = json.loads((tmp_path / "work" / "regmix_report.json").read_text())
    assert report["ok_runs"] == 11 and report["failed_runs"] == 1
    assert report["held_out"]["spearman"] > 0.5  # the bowl is learnable
    mixture = load_mixture(config.out)
    assert mixture.provenance["proxy_tokens_trained"] == 11 * 2 * 8 * 32  # ok runs' steps
    assert abs(mixture.weights["web"] - 0.5) < 0.2
    again = _FakeExecutor()
    before = (tmp_path / "m.json").read_bytes()
    assert run_mix(config, again).trained == [] and again.handed == []
    assert (tmp_path / "m.json").read_bytes() == before
    changed = _regmix_settings(manifest, tmp_path)
    changed["regmix"]["proxy_tokens"] = "6K"
    with pytest.raises(InputError, match="holds 12 run\\(s\\) trained with other settings"):
        run_mix(mix_config_from(changed), _FakeExecutor())


def test_all_proxy_runs_failing_exits_3(manifest, tmp_path, capsys, monkeypatch):
    from autoscale_ds.errors import EXIT_RUN_FAILED
    from autoscale_ds.orchestrate import executors

    monkeypatch.setattr(executors, "make_executor", lambda spec: _FakeExecutor(failing={"*"}))
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump(_regmix_settings(manifest, tmp_path)))
    code, _, err = _mix(["--config", config], capsys)
    assert code == EXIT_RUN_FAILED
    assert "regmix: 12 of 12 proxy runs failed" in err and len(err.strip().splitlines()) == 1


def test_mix_help_has_examples_and_the_config_keys(capsys):
    with pytest.raises(SystemExit) as info:
        main(["mix", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "regmix: {runs, proxy_tokens" in out
