import copy
import json
import os

import pytest

from autoscale_ds.errors import InputError
from autoscale_ds.formats.schemas import (Mixture, load_mixture, load_runs, mixture_from_dict,
                                  runs_from_dict, save_mixture, save_runs)

from synthetic import make_runs

VALID_RUNS = make_runs(["web", "code"], [0.5, 1.0], [0.8, 0.5], [1e6, 1e6])
VALID_MIXTURE = {"schema": "autoscale.mixture/v1", "total_tokens": 1000,
                 "weights": {"web": 0.25, "code": 0.75}, "tokens": {"web": 250, "code": 750},
                 "method": "ddo", "provenance": {"note": "hand-written"}}


def test_runs_round_trip_keeps_extra_keys(tmp_path):
    payload = copy.deepcopy(VALID_RUNS)
    payload["runs"][0]["seed"] = 7
    payload["cluster"] = "mine"
    path = tmp_path / "runs.json"
    save_runs(path, runs_from_dict(payload))
    assert json.loads(path.read_text()) == payload
    assert load_runs(path).runs[0].extra == {"seed": 7}


def test_mixture_round_trip_is_byte_stable(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    save_mixture(first, mixture_from_dict(VALID_MIXTURE))
    save_mixture(second, load_mixture(first))
    assert first.read_bytes() == second.read_bytes()
    assert json.loads(first.read_text()) == VALID_MIXTURE


def test_atomic_write_leaves_only_the_target(tmp_path):
    save_mixture(tmp_path / "m.json", mixture_from_dict(VALID_MIXTURE))
    assert os.listdir(tmp_path) == ["m.json"]


def test_a_mixture_that_fails_validation_is_never_written(tmp_path):
    bad = Mixture(1000, {"web": 0.5, "code": 0.6}, {"web": 500, "code": 600}, "ddo")
    with pytest.raises(InputError, match="sum to"):
        save_mixture(tmp_path / "m.json", bad)
    assert not (tmp_path / "m.json").exists()


def _runs_with(mutate):
    payload = copy.deepcopy(VALID_RUNS)
    mutate(payload)
    return payload


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.update(schema="autoscale.runs/v2"), "unknown schema 'autoscale.runs/v2'"),
    (lambda p: p.pop("schema"), "unknown schema None"),
    (lambda p: p.update(metric="accuracy"), "'metric' must be one of"),
    (lambda p: p.update(runs=[]), "non-empty list"),
    (lambda p: p["runs"][0].pop("id"), "run #0 needs a non-empty string 'id'"),
    (lambda p: p["runs"][1].update(id="base-seed0"), "'base-seed0' appears more than once"),
    (lambda p: p["runs"][1]["train_tokens"].update(web=-5), "run 'web-x0.2': train_tokens['web']: must be >= 0"),
    (lambda p: p["runs"][1]["train_tokens"].update(web="many"), "expected a number, got 'many'"),
    (lambda p: p["runs"][1]["train_tokens"].update(web=True), "expected a number, got True"),
    (lambda p: p["runs"][2]["eval"].update(held_out=0), "eval['held_out']: must be >= 1e-300"),
    (lambda p: p["runs"][2].update(eval={}), "needs at least one 'eval' value"),
    (lambda p: p["runs"][2].update(status="done"), "'status' must be one of"),
    (lambda p: p["runs"][3]["eval"].update(other=3.0), "unknown eval domain 'other'"),
    (lambda p: p["runs"][3]["train_tokens"].pop("code"), "lacks training domain 'code'"),
    (lambda p: p["runs"][3].update(train_tokens={}), "must name at least one domain"),
    (lambda p: p["runs"].__setitem__(0, [1, 2]), "run #0: expected a JSON object, got list"),
    (lambda p: p["runs"][1].update(eval_set="abc"), "run 'web-x0.2': eval_set: expected a JSON object"),
    (lambda p: p["runs"][1].update(eval_set={"fingerprint": 7}), "eval_set: 'fingerprint' must be a non-empty string"),
    (lambda p: p["runs"][1].update(eval_set={"fingerprint": "ab", "tokens": {"web": -1}}),
     "eval_set: tokens['web']: must be >= 0"),
])
def test_invalid_runs_files_name_the_problem(mutate, message):
    with pytest.raises(InputError, match=None) as info:
        runs_from_dict(_runs_with(mutate), source="runs.json")
    assert message in str(info.value) and "runs.json" in str(info.value)


def test_eval_set_fingerprint_is_read_from_the_row_and_kept_on_save(tmp_path):
    payload = _runs_with(lambda p: p["runs"][0].update(eval_set={"fingerprint": "ab12", "tokens": {"web": 64}}))
    runs = runs_from_dict(payload)
    assert runs.runs[0].eval_fingerprint == "ab12" and runs.runs[1].eval_fingerprint is None
    save_runs(tmp_path / "runs.json", runs)
    assert json.loads((tmp_path / "runs.json").read_text()) == payload


def test_failed_runs_may_lack_metrics():
    payload = _runs_with(lambda p: p["runs"][1].update(status="failed", eval={"held_out": "nan"},
                                                       reason="loss diverged"))
    runs = runs_from_dict(payload)
    assert not runs.runs[1].ok and runs.runs[1].extra["reason"] == "loss diverged"


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.update(schema="autoscale.mixture/v0"), "unknown schema"),
    (lambda m: m.update(weights={"web": 0.5, "code": 0.6}), "weights sum to 1.1"),
    (lambda m: m["weights"].update(web=-0.25, code=1.25), "weights['web']: must be >= 0"),
    (lambda m: m.update(total_tokens=0), "'total_tokens' must be positive"),
    (lambda m: m.update(tokens={"web": 250}), "must name the same domains"),
    (lambda m: m.update(tokens={"web": 300, "code": 700}), "tokens/total_tokens"),
    (lambda m: m.update(tokens={"web": 250, "code": 7500}), "tokens sum to"),
    (lambda m: m.update(method=""), "'method' must be a non-empty string"),
    (lambda m: m.update(provenance=[]), "'provenance' must be an object"),
    (lambda m: m.update(weights={}, tokens={}), "at least one domain"),
])
def test_invalid_mixture_files_name_the_problem(mutate, message):
    payload = copy.deepcopy(VALID_MIXTURE)
    mutate(payload)
    with pytest.raises(InputError) as info:
        mixture_from_dict(payload, source="mix.json")
    assert message in str(info.value) and "mix.json" in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"schema": NaN}', "not valid JSON"),
    ("", "not valid JSON"),
])
def test_unparseable_files_are_input_errors(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_mixture(path)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_runs(tmp_path / "nope.json")


# ------------------------------------------------- strict JSON / YAML readers (issue 11)

from dataclasses import dataclass  # noqa: E402

from autoscale_ds.loaders import loads_json, loads_yaml, parse_set_overrides, read_yaml  # noqa: E402
from autoscale_ds.yaml_config import load_yaml_config  # noqa: E402


def test_a_key_given_twice_in_a_runs_file_is_refused(tmp_path):
    path = tmp_path / "runs.json"
    text = json.dumps(VALID_RUNS).replace('"metric": "perplexity"',
                                          '"metric": "perplexity", "metric": "loss"')
    path.write_text(text)
    with pytest.raises(InputError, match=r"runs file .*runs.json: duplicate key 'metric'"):
        load_runs(path)


def test_a_key_given_twice_in_a_nested_json_object_is_refused():
    with pytest.raises(ValueError, match="duplicate key 'web'"):
        loads_json('{"weights": {"web": 0.5, "code": 0.5, "web": 0.25}}')
    # The same key in two different objects is fine.
    assert loads_json('[{"web": 1}, {"web": 2}]') == [{"web": 1}, {"web": 2}]


def test_a_key_given_twice_in_yaml_names_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: a\nnested:\n  x: 1\n  y: 2\n  x: 3\n")
    with pytest.raises(InputError) as info:
        read_yaml(path, "sweep config")
    message = str(info.value)
    assert message == (f"sweep config {path}:5:3: duplicate key 'x' (first given at line 3); "
                       "a key may appear once per mapping")


def test_yaml_merge_keys_may_still_be_overridden():
    assert loads_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n")["run"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("5E+8", 5e8), ("-2e-2", -0.02), (".5e3", 500.0), ("1.5", 1.5),
    ("10", 10), ("1_000", 1000), ("0x10", 16), ("'1e-3'", "1e-3"), ("1e", "1e"), ("e5", "e5"),
])
def test_yaml_reads_exponent_floats_without_a_dot_as_numbers(text, value):
    parsed = loads_yaml(f"v: {text}")["v"]
    assert parsed == value and type(parsed) is type(value)


def test_the_strict_loader_leaves_the_global_safe_loader_alone():
    import yaml

    assert yaml.safe_load("v: 1e-3")["v"] == "1e-3"  # PyYAML's own YAML 1.1 behaviour kept
    assert yaml.safe_load("a: 1\na: 2") == {"a": 2}


@dataclass
class _Settings:
    learning_rate: float = 0.1
    name: str = "x"


def test_load_yaml_config_reads_1e_3_as_a_number_in_the_file_and_in_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("learning_rate: 1e-3\n")
    assert load_yaml_config(path, _Settings, "settings").learning_rate == 0.001
    overridden = load_yaml_config(path, _Settings, "settings", parse_set_overrides(["learning_rate=2e-4"]))
    assert overridden.learning_rate == 0.0002


@pytest.mark.parametrize("text, position", [
    ("a: [1, 2\nb: 3\n", ":2:2: expected ',' or ']', but got ':' (while parsing a flow "
                         "sequence at line 1)"),
    ("a: 1\n  b: 2\n", ":2:4: mapping values are not allowed here"),
    ("a: {b: 1\n", ":2:1: expected ',' or '}'"),
    ("a: 'unterminated\n", ":2:1: found unexpected end of stream"),
    ("a: *nope\n", ":1:4: found undefined alias 'nope'"),
    ("a: !!python/object:os.system x\n", ":1:4: could not determine a constructor"),
])
def test_yaml_syntax_errors_are_one_line_with_file_line_and_column(tmp_path, text, position):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_yaml_config(path, _Settings, "settings")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"settings {path}{position}")


def test_json_syntax_errors_name_line_and_column(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{\n  "schema": "autoscale.mixture/v1",\n  "total_tokens": ,\n}')
    with pytest.raises(InputError, match=r"m\.json:3:19: not valid JSON \(Expecting value\)$"):
        load_mixture(path)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a directory, not a file"),
    (lambda p: p.write_bytes(b"\xff\xfe{}"), "not UTF-8 text"),
])
def test_unreadable_inputs_are_one_line(tmp_path, make, message):
    path = tmp_path / "runs.json"
    make(path)
    with pytest.raises(InputError, match=f"runs file {path}: {message}"):
        load_runs(path)


@pytest.mark.parametrize("pair, message", [
    ("predict={a: [1", r"--set 'predict=\{a: \[1': not valid YAML at column 7 of the value: "
                       r"expected ',' or '\]'"),
    ("train={x: 1, x: 2}", "duplicate key 'x'"),
    ("no_equals_sign", "--set expects KEY=VALUE"),
    ("=3", "--set expects KEY=VALUE"),
])
def test_set_overrides_fail_in_one_line(pair, message):
    with pytest.raises(InputError, match=message) as info:
        parse_set_overrides(["ok=1", pair])
    assert "\n" not in str(info.value)


def test_set_overrides_read_yaml_values():
    assert parse_set_overrides(["budgets=[1M, 2e6]", "train={seq_len: 64}", "lr=3e-4"]) == {
        "budgets": ["1M", 2e6], "train": {"seq_len": 64}, "lr": 3e-4}
