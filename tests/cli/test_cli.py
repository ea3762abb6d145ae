"""The ``autoscale`` CLI end to end, and its behaviour on malformed input."""

import json
import string
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscale_ds.cli import main

from synthetic import make_runs

DOMAINS = ["web", "code", "books"]


def _write_runs(path, base_tokens, eval_sets=(), **kwargs):
    """A synthetic runs file; ``eval_sets[k]`` tags run k with that eval fingerprint."""
    payload = make_runs(DOMAINS, [0.5, 1.0, 0.2], [0.8, 0.5, 1.2], base_tokens, **kwargs)
    for run, fingerprint in zip(payload["runs"], eval_sets):
        run["eval_set"] = {"fingerprint": fingerprint, "tokens": {"held_out": 2048}}
    path.write_text(json.dumps(payload))
    return path


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def two_budgets(tmp_path, capsys):
    small = _write_runs(tmp_path / "runs_small.json", [1e5, 1e5, 1e5], base_repeats=3, noise=0.002)
    large = _write_runs(tmp_path / "runs_large.json", [3e5, 3e5, 3e5])
    for runs, out in ((small, "m_small.json"), (large, "m_large.json")):
        code, _, err = _run(["ddo", "--runs", runs, "--out", tmp_path / out,
                             "--sensitivity-draws", 20], capsys)
        assert code == 0, err
    return tmp_path


def test_ddo_writes_a_valid_mixture_and_prints_a_table(two_budgets, capsys):
    code, out, _ = _run(["ddo", "--runs", two_budgets / "runs_small.json",
                         "--out", two_budgets / "again.json", "--sensitivity-draws", 20], capsys)
    assert code == 0
    assert "domain" in out and "DDO w" in out and "90% interval" in out and "within noise" in out
    assert "noise: relative sigma" in out and "estimated from 1 group(s) of repeated runs" in out
    mixture = json.loads((two_budgets / "m_small.json").read_text())
    assert mixture["schema"] == "autoscale.mixture/v1" and mixture["method"] == "ddo"
    assert sum(mixture["weights"].values()) == pytest.approx(1.0)
    assert mixture["total_tokens"] == 300000
    assert set(mixture["provenance"]["sensitivity"]["weights"]) == set(DOMAINS)
    # Same input, same seed: byte-identical output.
    assert (two_budgets / "again.json").read_bytes() == (two_budgets / "m_small.json").read_bytes()


def test_ddo_table_says_when_the_noise_is_unknown(two_budgets, capsys):
    code, out, _ = _run(["ddo", "--runs", two_budgets / "runs_large.json",
                         "--out", two_budgets / "single.json"], capsys)
    assert code == 0
    assert "noise: unknown -- repeat the base run over seeds or pass --noise-sigma" in out
    rows = out.splitlines()[2:2 + len(DOMAINS)]
    assert all(row.split()[-2:] == ["n/a", "n/a"] for row in rows)
    provenance = json.loads((two_budgets / "single.json").read_text())["provenance"]
    assert provenance["sensitivity"] == {"skipped": "noise unknown"}
    assert provenance["eval_set"] == {"fingerprint": None, "mixed": False}


def test_ddo_refuses_runs_measured_on_different_eval_sets(tmp_path, capsys, caplog):
    fingerprints = ["a" * 64] * 4 + ["b" * 64] + ["a" * 64] * 3  # code-x0.2 on another eval set
    runs = _write_runs(tmp_path / "runs.json", [1e5] * 3, eval_sets=fingerprints, base_repeats=2)
    code, out, err = _run(["ddo", "--runs", runs, "--out", tmp_path / "m.json"], capsys)
    assert code == 2 and not (tmp_path / "m.json").exists()
    _assert_clean_failure(code, err)
    assert ("runs measured on different eval sets: base-seed0, base-seed1, web-x0.2, web-x3, "
            "code-x3, books-x0.2 and 1 more on aaaaaaaaaaaa...; code-x0.2 on bbbbbbbbbbbb...; "
            "rerun them on one eval set or pass --allow-mixed-eval") in err

    code, out, err = _run(["ddo", "--runs", runs, "--out", tmp_path / "m.json",
                           "--allow-mixed-eval"], capsys)
    assert code == 0, err
    assert "combining runs measured on different eval sets (allowed)" in caplog.text
    record = json.loads((tmp_path / "m.json").read_text())["provenance"]["eval_set"]
    assert record["mixed"] is True
    assert [g["runs"] for g in record["groups"]][1] == ["code-x0.2"]


def test_predict_warns_when_budgets_were_measured_on_different_eval_sets(tmp_path, capsys, caplog):
    paths = []
    for name, tokens, fingerprint in (("small", 1e5, "c" * 64), ("large", 3e5, "d" * 64),
                                      ("large_same", 3e5, "c" * 64)):
        runs = _write_runs(tmp_path / f"runs_{name}.json", [tokens] * 3, eval_sets=[fingerprint] * 8,
                           base_repeats=2, noise=0.002)
        paths.append(tmp_path / f"m_{name}.json")
        assert _run(["ddo", "--runs", runs, "--out", paths[-1], "--sensitivity-draws", 5], capsys)[0] == 0
        assert json.loads(paths[-1].read_text())["provenance"]["eval_set"]["fingerprint"] == fingerprint
    caplog.clear()
    code, _, err = _run(["predict", "--mixture", paths[0], "--mixture", paths[1], "--steps", "1",
                         "--out", tmp_path / "next.json"], capsys)
    assert code == 0, err
    assert ("measured on different eval sets (300K on cccccccccccc...; 900K on dddddddddddd...)"
            in caplog.text)
    caplog.clear()  # one eval set shared by both budgets: nothing to warn about
    assert _run(["predict", "--mixture", paths[0], "--mixture", paths[2], "--steps", "1",
                 "--out", tmp_path / "same.json"], capsys)[0] == 0
    assert "eval sets" not in caplog.text


def test_predict_export_and_plot_chain(two_budgets, capsys):
    d = two_budgets
    code, out, err = _run(["predict", "--mixture", d / "m_small.json", "--mixture", d / "m_large.json",
                           "--target-tokens", "10M", "--floor", "0.05", "--out", d / "m_10M.json"], capsys)
    assert code == 0, err
    predicted = json.loads((d / "m_10M.json").read_text())
    assert predicted["total_tokens"] == 10_000_000 and predicted["method"] == "autoscale"
    assert sum(predicted["tokens"].values()) == 10_000_000
    assert min(predicted["weights"].values()) >= 0.05 - 1e-12
    assert "obs/doubling" in out

    code, _, err = _run(["predict", "--mixture", d / "m_small.json", "--mixture", d / "m_large.json",
                         "--steps", "1", "--out", d / "m_next.json"], capsys)
    assert code == 0, err
    small, large = (json.loads((d / n).read_text())["tokens"] for n in ("m_small.json", "m_large.json"))
    nxt = json.loads((d / "m_next.json").read_text())["tokens"]
    for domain in DOMAINS:  # the paper's rule N3 = N2^2 / N1, to the whole token
        assert abs(nxt[domain] - large[domain] ** 2 / small[domain]) <= 1.0

    (d / "paths.yaml").write_text(yaml.safe_dump({k: f"/data/{k}_text_document" for k in DOMAINS}))
    code, out, err = _run(["export", d / "m_10M.json", "--format", "megatron",
                           "--data-paths", d / "paths.yaml"], capsys)
    assert code == 0, err
    fields = out.split()
    assert fields[1::2] == [f"/data/{k}_text_document" for k in DOMAINS]
    assert sum(map(float, fields[0::2])) == pytest.approx(1.0)

    code, out, err = _run(["plot", d / "m_small.json", d / "m_large.json", d / "m_10M.json",
                           "--out-dir", d / "plots"], capsys)
    assert code == 0, err
    pngs = sorted(p.name for p in (d / "plots").iterdir())
    assert pngs == ["responses_300K.png", "responses_900K.png", "weights.png"]
    assert all((d / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.parametrize("command", ["ddo", "predict", "export", "plot"])
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "autoscale_ds", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("autoscale ")


# ----------------------------------------------------------- malformed input files

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | \
    st.text(string.printable, max_size=8)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _mutations(valid: dict):
    """Valid documents with one field replaced by arbitrary JSON, or dropped."""
    def mutate(args):
        path, replacement, drop = args
        doc = json.loads(json.dumps(valid))
        node = doc
        for key in path[:-1]:
            node = node[key]
        if drop:
            node.pop(path[-1]) if isinstance(node, dict) else node.pop(path[-1] % len(node))
        else:
            node[path[-1]] = replacement
        return doc

    leaves = list(_paths(valid))
    return st.tuples(st.sampled_from(leaves), _json_values, st.booleans()).map(mutate)


def _paths(node, prefix=()):
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        yield prefix + (key,)
        if isinstance(value, (dict, list)) and value:
            yield from _paths(value, prefix + (key,))


_VALID_RUNS = make_runs(DOMAINS, [0.5, 1.0, 0.2], [0.8, 0.5, 1.2], [1e5, 1e5, 1e5])
_VALID_MIXTURE = {"schema": "autoscale.mixture/v1", "total_tokens": 1000,
                  "weights": {"web": 0.25, "code": 0.75}, "tokens": {"web": 250, "code": 750},
                  "method": "ddo", "provenance": {}}


def _assert_clean_failure(code, err):
    assert "Traceback" not in err
    if code != 0:
        assert code == 2
        lines = [line for line in err.splitlines() if line.startswith("autoscale: error:")]
        assert len(lines) == 1, err


_settings = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(document=_mutations(_VALID_RUNS) | _json_values)
def test_malformed_runs_files_fail_cleanly(document, tmp_path, capsys):
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps(document))
    code, _, err = _run(["ddo", "--runs", runs, "--out", tmp_path / "m.json",
                         "--sensitivity-draws", "0"], capsys)
    _assert_clean_failure(code, err)


@_settings
@given(document=_mutations(_VALID_MIXTURE) | _json_values)
def test_malformed_mixture_files_fail_cleanly(document, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({**_VALID_MIXTURE, "total_tokens": 4000,
                                "tokens": {"web": 1000, "code": 3000}}))
    code, _, err = _run(["predict", "--mixture", bad, "--mixture", good, "--steps", "1",
                         "--out", tmp_path / "o.json"], capsys)
    _assert_clean_failure(code, err)


@_settings
@given(raw=st.binary(max_size=64))
def test_arbitrary_bytes_fail_cleanly(raw, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_bytes(raw)
    code, _, err = _run(["ddo", "--runs", bad, "--out", tmp_path / "m.json"], capsys)
    assert code == 2
    _assert_clean_failure(code, err)


# ------------------------------------------------------------ issue 11: flags and outputs

from autoscale_ds.console import parse_token_count, token_count_of  # noqa: E402
from autoscale_ds.cli.common import check_output_file  # noqa: E402
from autoscale_ds.method.ddo import DDOOptions  # noqa: E402
from autoscale_ds.errors import InputError  # noqa: E402


@pytest.mark.parametrize("text, count", [
    ("10B", 10**10), ("1.5e9", 1_500_000_000), ("4.5M", 4_500_000), ("2T", 2 * 10**12),
    ("1e20", 10**20), ("1e30", 10**30), ("1.25e21", 1_250_000_000_000_000_000_000),
    ("123456789012345678901234567890123", 123456789012345678901234567890123), ("0.5", 0.5),
])
def test_token_counts_are_exact(text, count):
    parsed = parse_token_count(text)
    assert parsed == count and type(parsed) is type(count)


@pytest.mark.parametrize("text", ["abc", "", "-5", "0", "10X", "1e301", "1e99999999", "nan"])
def test_a_bad_token_count_inside_a_flag_names_the_flag(text):
    with pytest.raises(InputError, match=r"^--available-tokens web: "):
        token_count_of(text, "--available-tokens web")


def test_a_bad_flag_is_one_error_line_not_a_usage_block(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "--mixture", "a.json", "--target-tokens", "lots", "--out", "b.json"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("autoscale: error: predict: argument --target-tokens: not a token "
                          "count: 'lots'") and "autoscale predict --help" in err


def test_check_output_file_refuses_inputs_and_directories(tmp_path):
    source = tmp_path / "in.json"
    source.write_text("{}")
    (tmp_path / "alias.json").symlink_to(source)
    for out in (source, tmp_path / "alias.json", tmp_path / "x" / ".." / "in.json"):
        with pytest.raises(InputError, match="is the input file"):
            check_output_file(out, [source])
    with pytest.raises(InputError, match="is a directory"):
        check_output_file(tmp_path, [source])
    with pytest.raises(InputError, match="in.json is not a directory"):
        check_output_file(source / "out.json", [])
    check_output_file(tmp_path / "new" / "out.json", [source])  # a fresh path is fine


@pytest.mark.parametrize("weights, message", [
    ({"web": -1.0, "code": 1.0}, "eval weight of 'web' must be a finite number >= 0"),
    ({"web": float("inf")}, "eval weight of 'web' must be a finite number >= 0"),
    ({"web": True}, "eval weight of 'web' must be a finite number >= 0"),
    ({"web": "1"}, "eval weight of 'web' must be a finite number >= 0"),
    ({"web": 0, "code": 0.0}, "at least one > 0"),
    (["web"], "eval_weights must map eval domains to weights"),
])
def test_ddo_options_refuse_bad_eval_weights(weights, message):
    with pytest.raises(InputError, match=message):
        DDOOptions(eval_weights=weights)


def test_ddo_eval_weights_shape_the_objective(tmp_path, capsys):
    payload = make_runs(DOMAINS, [0.5, 1.0, 0.2], [0.8, 0.5, 1.2], [1e5] * 3)
    for k, run in enumerate(payload["runs"]):
        held_out = run["eval"].pop("held_out")
        run["eval"] = {"web": held_out, "code": held_out * (1.0 + 0.05 * k)}
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps(payload))
    ratios = {}
    for name, flags in (("web", ["web=1", "code=0"]), ("mean", ["web=1", "code=1"])):
        args = [arg for flag in flags for arg in ("--eval-weight", flag)]
        code, _, err = _run(["ddo", "--runs", runs, "--out", tmp_path / f"{name}.json", *args], capsys)
        assert code == 0, err
        ratios[name] = json.loads((tmp_path / f"{name}.json").read_text())["provenance"]["ratios"]
    assert ratios["web"] != pytest.approx(ratios["mean"], rel=1e-3)
