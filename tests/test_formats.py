import copy
import json
import os

import pytest

from autoscale_ds.errors import InputError
from autoscale_ds.formats import (Mixture, load_mixture, load_runs, mixture_from_dict,
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
