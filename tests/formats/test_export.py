"""Tests for autoscale_ds.formats.export: every format round-trips, matches upstream readers, and
every bad input fails with an InputError that names the culprit."""

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscale_ds.errors import InputError
from autoscale_ds.formats.export import (
    DEPRECATED_FORMATS,
    FORMATS,
    DataPaths,
    data_paths_from_mapping,
    export_mixture,
    load_data_paths,
    parse_export,
)

ALL_FORMATS = [f for f in FORMATS if f not in DEPRECATED_FORMATS]
EXPECTED_FORMATS = {
    "megatron", "megatron-data-args", "megatron-per-split", "megatron-deepspeed", "gpt-neox",
    "hf", "mosaicml", "litdata", "nanotron", "olmo-core",
}

MAP = {
    "web": "/data/web/web_text_document",
    "code": ["/data/code/a", "/data/code/b"],
    "books": {"/data/books/x": 3, "/data/books/y": 1},
    "wiki": {"train": "/data/wiki/train", "valid": ["/data/wiki/v1", "/data/wiki/v2"],
             "test": {"/data/wiki/t1": 1, "/data/wiki/t2": 4}},
    "math": "/data/math/train",
}
WEIGHTS = {"web": 0.35, "code": 0.25, "books": 0.2, "wiki": 0.2, "math": 0.0}


@pytest.fixture
def paths() -> DataPaths:
    return data_paths_from_mapping(MAP, source="paths.yaml")


def train_blend(weights, paths):
    """Our expected (prefix, weight) list for the train split, zero-weight domains left out."""
    return [(p, w * share) for d, w in weights.items() if w > 0 for p, share in paths.shards(d)]


# ----------------------------------------------------------------------------- round trips


def test_format_names():
    assert set(ALL_FORMATS) == EXPECTED_FORMATS
    assert DEPRECATED_FORMATS == {"litgpt": "litdata"}


def test_litgpt_is_a_deprecated_alias_of_litdata(caplog):
    paths = data_paths_from_mapping({"a": "/p/a", "b": "/p/b"})
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        text = export_mixture({"a": 0.25, "b": 0.75}, paths, "litgpt")
    assert "deprecated" in caplog.text and "litdata" in caplog.text
    assert text == export_mixture({"a": 0.25, "b": 0.75}, paths, "litdata")
    assert parse_export(text, "litgpt", paths) == {"a": 0.25, "b": 0.75}


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_round_trip_with_shards_splits_and_zero_weight(fmt, paths):
    text = export_mixture(WEIGHTS, paths, fmt)
    back = parse_export(text, fmt, paths)
    assert back == pytest.approx(WEIGHTS, rel=1e-12, abs=0.0)
    assert list(back) == list(paths.domains)
    assert back["math"] == 0.0
    assert "/data/math/train" not in text  # zero-weight domains are left out


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_round_trip_train_only_map(fmt):
    paths = data_paths_from_mapping({"a": "/p/a", "b": ["/p/b1", "/p/b2", "/p/b3"]})
    weights = {"a": 1 / 3, "b": 2 / 3}
    back = parse_export(export_mixture(weights, paths, fmt), fmt, paths)
    assert back == pytest.approx(weights, rel=1e-12, abs=0.0)


def test_weights_are_written_at_full_precision(paths):
    weights = {"web": 1 / 3, "code": 2 / 3 - 1e-17, "books": 0.0, "wiki": 0.0, "math": 0.0}
    text = export_mixture(weights, paths, "megatron")
    tokens = text.split()
    assert tokens[0] == repr(1 / 3)
    assert [float(t) for t in tokens[0::2]] == [w for _, w in train_blend(weights, paths)]


def test_shares_multiply_domain_weight(paths):
    tokens = export_mixture(WEIGHTS, paths, "megatron-data-args").split()
    got = dict(zip(tokens[1::2], map(float, tokens[0::2])))
    assert got["/data/code/a"] == got["/data/code/b"] == 0.125
    assert got["/data/books/x"] == pytest.approx(0.15, rel=1e-15)
    assert got["/data/books/y"] == pytest.approx(0.05, rel=1e-15)
    assert list(got) == [p for p, _ in train_blend(WEIGHTS, paths)]  # mixture order kept


def test_exact_two_domain_outputs():
    paths = data_paths_from_mapping({"a": "/p/a", "b": "/p/b"})
    w = {"a": 0.25, "b": 0.75}
    assert export_mixture(w, paths, "megatron") == "0.25 /p/a 0.75 /p/b\n"
    assert export_mixture(w, paths, "megatron-data-args") == "0.25 /p/a\n0.75 /p/b\n"
    assert export_mixture(w, paths, "megatron-deepspeed") == (
        '# Megatron-DeepSpeed data arguments. Use: source THIS_FILE; pretrain_gpt.py ... "${DATA_ARGS[@]}"\n'
        "DATA_ARGS=(\n  --data-path\n    0.25 /p/a\n    0.75 /p/b\n)\n")
    assert json.loads(export_mixture(w, paths, "megatron-per-split")) == {
        "train": ["0.25", "/p/a", "0.75", "/p/b"], "valid": None, "test": None}
    assert yaml.safe_load(export_mixture(w, paths, "mosaicml")) == {
        "streams": {"a": {"local": "/p/a", "proportion": 0.25}, "b": {"local": "/p/b", "proportion": 0.75}}}
    assert yaml.safe_load(export_mixture(w, paths, "nanotron")) == {
        "dataset": {"dataset_folder": ["/p/a", "/p/b"], "dataset_weights": [0.25, 0.75]}}
    assert yaml.safe_load(export_mixture(w, paths, "olmo-core")) == {"sources": [
        {"source_name": "a", "target_ratio": 0.25, "paths": ["/p/a"], "max_repetition_ratio": 1.0},
        {"source_name": "b", "target_ratio": 0.75, "paths": ["/p/b"], "max_repetition_ratio": 1.0}]}
    assert json.loads(export_mixture(w, paths, "litdata", seed=7)) == {
        "datasets": [{"input_dir": "/p/a"}, {"input_dir": "/p/b"}], "weights": [0.25, 0.75],
        "seed": 7, "iterate_over_all": False}
    hf = json.loads(export_mixture(w, paths, "hf", seed=3))
    assert (hf["datasets"], hf["probabilities"], hf["seed"]) == (["/p/a", "/p/b"], [0.25, 0.75], 3)
    assert hf["stopping_strategy"] == "first_exhausted" and "unconverted" in hf["probabilities_are"]


@st.composite
def mixtures(draw):
    n = draw(st.integers(1, 12))
    raw = draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1.0)), min_size=n, max_size=n))
    if not any(raw):
        raw[draw(st.integers(0, n - 1))] = 1.0
    total = math.fsum(raw)
    weights = {f"d{i}": r / total for i, r in enumerate(raw)}
    mapping = {}
    for i in range(n):
        k = draw(st.integers(1, 4))
        shards = [f"/data/d{i}/shard_{j}" for j in range(k)]
        kind = draw(st.sampled_from(["one", "list", "sizes", "split"]))
        if kind == "one":
            value = shards[0]
        elif kind == "list":
            value = shards
        elif kind == "sizes":
            value = {s: draw(st.floats(0.01, 1e6)) for s in shards}
        else:
            value = {"train": shards, "valid": f"/data/d{i}/valid"}
        mapping[f"d{i}"] = value
    return weights, data_paths_from_mapping(mapping, source="hyp.yaml")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixtures())
def test_round_trip_property(case):
    weights, paths = case
    for fmt in ALL_FORMATS:
        back = parse_export(export_mixture(weights, paths, fmt), fmt, paths)
        assert back == pytest.approx(weights, rel=1e-12, abs=0.0), fmt


# ----------------------------------------------------------------------------- upstream readers


@pytest.fixture(scope="module")
def megatron_utils():
    pytest.importorskip("megatron.core")
    from megatron.core.datasets import utils

    return utils


def _normalised(blend):
    total = math.fsum(w for _, w in blend)
    return [p for p, _ in blend], [w / total for _, w in blend]


@pytest.mark.parametrize("fmt", ["megatron", "megatron-data-args"])
def test_megatron_core_reads_flat_formats(fmt, paths, megatron_utils):
    text = export_mixture(WEIGHTS, paths, fmt)
    prefixes, weights = megatron_utils.get_blend_from_list(text.split())
    exp_prefixes, exp_weights = _normalised(train_blend(WEIGHTS, paths))
    assert prefixes == exp_prefixes
    assert megatron_utils.normalize(weights) == pytest.approx(exp_weights, rel=1e-12, abs=0.0)


def test_megatron_core_reads_per_split(paths, megatron_utils):
    from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig

    data = json.loads(export_mixture(WEIGHTS, paths, "megatron-per-split"))
    for split in ["train", "valid", "test"]:  # what Megatron-LM's get_blend_and_blend_per_split does
        if isinstance(data[split], str):
            data[split] = data[split].split()
    blend_per_split = [megatron_utils.get_blend_from_list(data[s]) for s in ["train", "valid", "test"]]
    prefixes, weights = blend_per_split[0]
    exp_prefixes, exp_weights = _normalised(train_blend(WEIGHTS, paths))
    assert prefixes == exp_prefixes
    assert megatron_utils.normalize(weights) == pytest.approx(exp_weights, rel=1e-12, abs=0.0)
    assert blend_per_split[1] == (["/data/wiki/v1", "/data/wiki/v2"], [0.5, 0.5])
    assert blend_per_split[2][0] == ["/data/wiki/t1", "/data/wiki/t2"]
    assert blend_per_split[2][1] == pytest.approx([0.2, 0.8], rel=1e-15)
    BlendedMegatronDatasetConfig(random_seed=1, sequence_length=8, blend_per_split=blend_per_split)


def test_megatron_core_accepts_null_split(megatron_utils):
    from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig

    paths = data_paths_from_mapping({"a": "/p/a", "b": "/p/b"})
    data = json.loads(export_mixture({"a": 0.5, "b": 0.5}, paths, "megatron-per-split"))
    assert data["valid"] is None and data["test"] is None
    blend_per_split = [megatron_utils.get_blend_from_list(data[s]) for s in ["train", "valid", "test"]]
    assert blend_per_split[1:] == [None, None]
    BlendedMegatronDatasetConfig(random_seed=1, sequence_length=8, blend_per_split=blend_per_split)


def _bash_array(text, tmp_path):
    """The argv that `source FILE; cmd "${DATA_ARGS[@]}"` hands to cmd."""
    (tmp_path / "ds_args.sh").write_text(text, encoding="utf-8")
    script = 'source ./ds_args.sh; printf "%s\\0" "${DATA_ARGS[@]}"'
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, check=True)
    return out.stdout.decode().split("\0")[:-1]


def test_megatron_deepspeed_per_split_flags_and_quoting(tmp_path):
    paths = data_paths_from_mapping({"a": {"train": "/p/a $x", "test": "/p/at"}, "b": "/p/b"})
    text = export_mixture({"a": 0.5, "b": 0.5}, paths, "megatron-deepspeed")
    assert _bash_array(text, tmp_path) == ["--train-data-path", "0.5", "/p/a $x", "0.5", "/p/b",
                                           "--test-data-path", "1.0", "/p/at"]
    assert parse_export(text, "megatron-deepspeed", paths) == {"a": 0.5, "b": 0.5}
    # The test split vanishes with a's weight, but the map is per-split: no --data-path + --split.
    text = export_mixture({"a": 0.0, "b": 1.0}, paths, "megatron-deepspeed")
    assert _bash_array(text, tmp_path) == ["--train-data-path", "1.0", "/p/b"]


def test_megatron_deepspeed_still_parses_the_old_one_line_form():
    paths = data_paths_from_mapping({"a": "/p/a b", "b": "/p/b"})
    assert parse_export("--data-path 0.25 '/p/a b' 0.75 /p/b\n", "megatron-deepspeed", paths) == {
        "a": 0.25, "b": 0.75}
    with pytest.raises(InputError, match="not closed"):
        parse_export("DATA_ARGS=(\n --data-path 1 /p/b\n", "megatron-deepspeed", paths)


def test_gpt_neox_yaml_keys(paths):
    obj = yaml.safe_load(export_mixture(WEIGHTS, paths, "gpt-neox"))
    assert list(obj) == ["train-data-paths", "train-data-weights", "valid-data-paths",
                         "valid-data-weights", "test-data-paths", "test-data-weights"]
    exp = train_blend(WEIGHTS, paths)
    assert obj["train-data-paths"] == [p for p, _ in exp]
    assert obj["train-data-weights"] == [w for _, w in exp]
    assert obj["valid-data-paths"] == ["/data/wiki/v1", "/data/wiki/v2"]
    assert obj["valid-data-weights"] == [0.5, 0.5]


def test_gpt_neox_reuses_train_for_missing_eval_splits(caplog):
    paths = data_paths_from_mapping({"a": "/p/a", "b": "/p/b"})
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        obj = yaml.safe_load(export_mixture({"a": 0.5, "b": 0.5}, paths, "gpt-neox"))
    assert obj["valid-data-paths"] == obj["test-data-paths"] == ["/p/a", "/p/b"]
    assert "valid-data-paths" in caplog.text


def test_gpt_neox_fills_a_missing_test_split_from_valid_not_train(caplog):
    paths = data_paths_from_mapping({"a": {"train": "/p/a", "valid": "/p/av"}, "b": "/p/b"})
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        text = export_mixture({"a": 0.5, "b": 0.5}, paths, "gpt-neox")
    obj = yaml.safe_load(text)
    assert obj["test-data-paths"] == obj["valid-data-paths"] == ["/p/av"]
    assert obj["test-data-weights"] == [1.0]
    assert "test reuses the valid paths" in text.splitlines()[0]
    assert "reuses the valid paths" in caplog.text
    # No valid split but a test split: valid is filled from test (held out), not train.
    paths = data_paths_from_mapping({"a": {"train": "/p/a", "test": "/p/at"}, "b": "/p/b"})
    obj = yaml.safe_load(export_mixture({"a": 0.5, "b": 0.5}, paths, "gpt-neox"))
    assert obj["valid-data-paths"] == obj["test-data-paths"] == ["/p/at"]


def test_hf_probabilities_sum_to_one():
    paths = data_paths_from_mapping({f"d{i}": [f"/p/{i}/{j}" for j in range(3)] for i in range(7)})
    raw = [1 / 7, 0.1, 0.3, 1 / 3, 0.05, 0.001, 0.2]
    weights = {f"d{i}": r / math.fsum(raw) for i, r in enumerate(raw)}
    obj = json.loads(export_mixture(weights, paths, "hf"))
    assert len(obj["datasets"]) == len(obj["probabilities"]) == 21
    assert abs(math.fsum(obj["probabilities"]) - 1.0) <= 1e-12
    assert abs(sum(obj["probabilities"]) - 1.0) <= 1e-12


def test_mosaicml_remote_paths_and_unique_stream_names():
    paths = data_paths_from_mapping({"a": ["s3://bucket/a0", "s3://bucket/a1"], "a_0": "/local/x"})
    obj = yaml.safe_load(export_mixture({"a": 0.5, "a_0": 0.5}, paths, "mosaicml"))
    assert obj["streams"]["a_0"] == {"remote": "s3://bucket/a0", "proportion": 0.25}
    assert len(obj["streams"]) == 3
    assert {"local": "/local/x", "proportion": 0.5} in obj["streams"].values()


def test_module_is_pure():
    code = "import sys, autoscale_ds.formats.export; sys.exit(any(m in sys.modules for m in "
    code += "('torch', 'deepspeed', 'transformers')))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------- paths-map errors


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_yaml_and_json_files(tmp_path):
    y = load_data_paths(_write(tmp_path, "p.yaml", "web: /p/web\ncode: {/p/c1: 3, /p/c2: 1}\n"))
    j = load_data_paths(_write(tmp_path, "p.json", json.dumps({"web": "/p/web",
                                                               "code": {"/p/c1": 3, "/p/c2": 1}})))
    assert y.by_domain == j.by_domain
    assert y.shards("code") == [("/p/c1", 0.75), ("/p/c2", 0.25)]
    assert y.source.endswith("p.yaml")


@pytest.mark.parametrize("name, text, needles", [
    ("list.yaml", "- /p/a\n- /p/b\n", ["list.yaml", "mapping", "list"]),
    ("empty.yaml", "", ["empty.yaml", "empty"]),
    ("emptymap.json", "{}", ["emptymap.json", "no domains"]),
    ("badtype.yaml", "web: 3\n", ["badtype.yaml", "'web'", "int"]),
    ("zero.yaml", "web: {/p/a: 0, /p/b: 1}\n", ["zero.yaml", "'web'", "/p/a", "positive"]),
    ("neg.yaml", "web: {/p/a: -2}\n", ["neg.yaml", "'web'", "positive"]),
    ("nan.yaml", "web: {/p/a: .nan, /p/b: 1}\n", ["nan.yaml", "'web'", "/p/a", "nan"]),
    ("nan.json", '{"web": {"/p/a": NaN}}', ["nan.json", "NaN", "not valid JSON"]),
    ("emptypath.yaml", "web: ''\n", ["emptypath.yaml", "'web'", "empty"]),
    ("emptylist.yaml", "web: []\n", ["emptylist.yaml", "'web'", "empty"]),
    ("nopaths.yaml", "web:\n", ["nopaths.yaml", "'web'", "no paths"]),
    ("split.yaml", "web: {train: /p/a, eval: /p/b}\n", ["split.yaml", "'web'", "'eval'", "split"]),
    ("notrain.yaml", "web: {valid: /p/a}\n", ["notrain.yaml", "'web'", "train"]),
    ("syntax.yaml", "web: [/p/a\n", ["syntax.yaml:2:1:", "expected ',' or ']'", "line 1"]),
    ("syntax.json", '{"web": "/p/a",}', ["syntax.json:1:16:", "not valid JSON"]),
    ("dupe.yaml", "web: /p/a\nweb: /p/b\n", ["dupe.yaml:2:1:", "duplicate key 'web'", "line 1"]),
    ("dupe.json", '{"web": "/p/a", "web": "/p/b"}', ["dupe.json", "duplicate key 'web'"]),
    ("dupe-inner.yaml", "web:\n  train: /p/a\n  train: /p/b\n", ["dupe-inner.yaml:3:3:", "'train'"]),
    ("dupe-inner.json", '{"web": {"/p/a": 1, "/p/a": 2}}', ["dupe-inner.json", "'/p/a'"]),
    ("shared.yaml", "web: /p/a\ncode: [/p/b, /p/a]\n", ["shared.yaml", "/p/a", "'web'", "'code'"]),
    ("twice.yaml", "web: [/p/a, /p/a]\n", ["twice.yaml", "'web'", "/p/a", "twice"]),
    ("boolname.yaml", "yes: /p/a\n", ["boolname.yaml", "True", "quote"]),
    ("space.yaml", "web: '/p/a '\n", ["space.yaml", "'web'", "whitespace"]),
    ("pathtype.yaml", "web: [/p/a, 3]\n", ["pathtype.yaml", "'web'", "3", "string"]),
])
def test_bad_paths_files(tmp_path, name, text, needles):
    with pytest.raises(InputError) as err:
        load_data_paths(_write(tmp_path, name, text))
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert "\n" not in str(err.value)  # the CLI prints it as one line


def test_paths_file_exponent_sizes_are_numbers(tmp_path):
    # YAML 1.1 reads 1e9 as the string "1e9", which the size check then refused.
    paths = load_data_paths(_write(tmp_path, "p.yaml", "web: {/p/a: 1e9, /p/b: 3E+9}\n"))
    assert paths.shards("web") == [("/p/a", 0.25), ("/p/b", 0.75)]


def test_unreadable_paths_file(tmp_path):
    with pytest.raises(InputError, match="cannot read data-paths file .*missing.yaml"):
        load_data_paths(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="cannot read data-paths file"):
        load_data_paths(tmp_path)  # a directory
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"web: /p/\xe9\n")
    with pytest.raises(InputError, match="latin1.yaml"):
        load_data_paths(bad)


def test_data_paths_built_in_code_are_checked():
    with pytest.raises(InputError, match="'web'.*sum to"):
        DataPaths({"web": {"train": [("/p/a", 0.5)]}}, source="code")
    with pytest.raises(InputError, match="'web'.*train"):
        DataPaths({"web": {"valid": [("/p/a", 1.0)]}}, source="code")


# ----------------------------------------------------------------------------- export errors


def test_unknown_format_lists_known(paths):
    with pytest.raises(InputError) as err:
        export_mixture(WEIGHTS, paths, "megatorn")
    assert "'megatorn'" in str(err.value)
    for fmt in EXPECTED_FORMATS:
        assert fmt in str(err.value)
    with pytest.raises(InputError, match="megatorn"):
        parse_export("", "megatorn", paths)


def test_missing_domain_names_domain_and_file(paths):
    with pytest.raises(InputError) as err:
        export_mixture({"web": 0.5, "reddit": 0.5}, paths, "megatron")
    assert "'reddit'" in str(err.value) and "paths.yaml" in str(err.value)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.5", True, None])
def test_bad_weights(paths, bad):
    with pytest.raises(InputError, match="'code'"):
        export_mixture({"web": 0.5, "code": bad}, paths, "hf")


def test_all_zero_or_empty_mixture(paths):
    with pytest.raises(InputError, match="0"):
        export_mixture({"web": 0.0, "code": 0.0}, paths, "megatron")
    with pytest.raises(InputError, match="no domains"):
        export_mixture({}, paths, "megatron")


def test_extra_map_domains_warn_not_fail(paths, caplog):
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        text = export_mixture({"web": 1.0}, paths, "megatron")
    assert text == "1.0 /data/web/web_text_document\n"
    assert "code" in caplog.text and "paths.yaml" in caplog.text


def test_whitespace_path_rejected_by_megatron():
    paths = data_paths_from_mapping({"a": "/p/a b", "b": "/p/b"}, source="ws.yaml")
    for fmt in ("megatron", "megatron-data-args"):
        with pytest.raises(InputError) as err:
            export_mixture({"a": 0.5, "b": 0.5}, paths, fmt)
        for needle in (fmt, "'/p/a b'", "domain 'a'", "ws.yaml"):
            assert needle in str(err.value), (needle, str(err.value))
    assert "whitespace" in str(err.value)
    for fmt in ("hf", "megatron-per-split", "megatron-deepspeed"):  # these carry it
        assert parse_export(export_mixture({"a": 0.5, "b": 0.5}, paths, fmt), fmt, paths) == {"a": 0.5, "b": 0.5}


# ----------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize("fmt, text, needle", [
    ("megatron", "0.5 /p/a 0.5", "pairs"),
    ("megatron", "", "pairs"),
    ("megatron", "abc /data/web/web_text_document", "'abc'"),
    ("megatron-data-args", "-1 /data/web/web_text_document", "'-1'"),
    ("megatron-per-split", "[1, 2", "megatron-per-split export:1:6: expected ',' or ']'"),
    ("hf", "{\"datasets\":\t[\"/data/web/web_text_document\"], \"probabilities\": [NaN]}", "NaN"),
    # A key given twice: the last one would silently win (JSON, and YAML with its line).
    ("hf", '{"datasets": ["/data/web/web_text_document"], "probabilities": [1], "datasets": []}',
     "hf export: duplicate key 'datasets'"),
    ("megatron-per-split", '{"train": ["1", "/data/web/web_text_document"],\t"train": null}',
     "duplicate key 'train'"),
    ("gpt-neox", "train-data-paths: [/data/web/web_text_document]\ntrain-data-weights: [1]\n"
     "train-data-paths: []\n", "gpt-neox export:3:1: duplicate key 'train-data-paths' (first given at line 1)"),
    ("megatron-per-split", '{"train": ["1", "/data/web/web_text_document"]}', "'valid'"),
    ("megatron-per-split", '{"train": null, "valid": null, "test": null}', "'train' is null"),
    ("megatron-deepspeed", "--data-path 1 '/p/a", "shell"),
    ("megatron-deepspeed", "--seq-length 8", "--data-path"),
    ("gpt-neox", "train-data-paths: [/data/web/web_text_document]\ntrain-data-weights: [1, 2]\n",
     "1 paths but 2 weights"),
    ("gpt-neox", "valid-data-paths: [/data/web/web_text_document]\n", "train-data-paths"),
    ("hf", '{"datasets": ["/data/web/web_text_document"]}', "'probabilities'"),
    ("hf", "- a\n- b\n", "mapping"),
    ("mosaicml", "streams: [1, 2]\n", "streams"),
    ("litgpt", '{"weights": [1]}', "'datasets'"),
    ("nanotron", "dataset: {dataset_folder: [/data/web/web_text_document]}\n", "dataset_weights"),
    ("olmo-core", "sources: [{source_name: x, target_ratio: 1}]\n", "'x'"),
    ("olmo-core", "sources: [{source_name: x, target_ratio: 1, paths: [/data/web/web_text_document, "
     "/data/code/a]}]\n", "several domains"),
])
def test_bad_exports(paths, fmt, text, needle):
    with pytest.raises(InputError) as err:
        parse_export(text, fmt, paths)
    assert needle in str(err.value), str(err.value)
    assert "\n" not in str(err.value)  # the CLI prints it as one line


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_number_like_paths_round_trip(fmt):
    # parse_export reads 1e5 as a number (YAML 1.2, like OmegaConf): YAML exports quote it.
    paths = data_paths_from_mapping({"a": "1e5", "b": {"train": "2E-3", "valid": "/p/b"}})
    assert parse_export(export_mixture({"a": 0.25, "b": 0.75}, paths, fmt), fmt, paths) == {
        "a": 0.25, "b": 0.75}


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_parse_names_unknown_path(paths, fmt):
    other = data_paths_from_mapping({"web": "/elsewhere/web", "code": "/data/code/a"})
    text = export_mixture({"web": 0.5, "code": 0.5}, other, fmt)
    with pytest.raises(InputError) as err:
        parse_export(text, fmt, paths)
    assert "'/elsewhere/web'" in str(err.value) and "paths.yaml" in str(err.value)


def test_parse_accepts_upstream_variants(paths):
    web = "/data/web/web_text_document"
    assert parse_export(f"train_data_paths: [{web}]\n", "gpt-neox", paths)["web"] == 1.0
    assert parse_export(f"dataset: {{dataset_folder: {web}}}\n", "nanotron", paths)["web"] == 1.0
    legacy = f"data_stages:\n- data:\n    dataset:\n      dataset_folder: {{{web}: 3, /data/code/a: 1}}\n"
    assert parse_export(legacy, "nanotron", paths)["web"] == 0.75
    foundry = f"train_loader:\n  dataset:\n    streams:\n      w: {{local: {web}, proportion: 2}}\n"
    assert parse_export(foundry, "mosaicml", paths)["web"] == 1.0
    cmd = f"python pretrain_gpt.py --num-layers 2 \\\n  --data-path 1 {web} --split 98,2,0\n"
    assert parse_export(cmd, "megatron-deepspeed", paths)["web"] == 1.0


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    paths = data_paths_from_mapping({"a": {"/x": np.float32(2), "/y": np.int64(1)}, "b": "/z"})
    assert paths.shards("a") == [("/x", 2 / 3), ("/y", 1 / 3)]
    text = export_mixture({"a": np.float32(0.5), "b": np.float64(0.5)}, paths, "olmo-core")
    assert parse_export(text, "olmo-core", paths) == {"a": 0.5, "b": 0.5}
    with pytest.raises(InputError, match="'a'"):
        export_mixture({"a": np.bool_(True), "b": 0.5}, paths, "megatron")


def test_a_domains_manifest_serves_as_the_paths_map(prepared, tmp_path):
    from autoscale_ds.formats.export import export_mixture, load_data_paths

    paths = load_data_paths(prepared.root / "manifest.yaml")
    domains = list(prepared.domains)
    weights = {d: 1.0 / len(domains) for d in domains}
    neox = yaml.safe_load(export_mixture(weights, paths, "gpt-neox"))
    assert neox["train-data-paths"] == [str((prepared.root / prepared.domains[d].train.prefix).resolve())
                                        for d in domains]
    assert neox["valid-data-paths"][0].endswith(f"{domains[0]}/valid_text_document")
    for prefix in neox["train-data-paths"] + neox["valid-data-paths"]:
        assert os.path.exists(prefix + ".bin") and os.path.exists(prefix + ".idx")


# ----------------------------------------------------------------------------- shell safety
# Each Megatron-family output is run the way the README says to use it, on hostile paths, with
# a stand-in for pretrain_gpt.py that prints its argv: the argv must be exactly the intended
# one, and no command hidden in a path may run.

STAND_IN = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def _hostile(marker):
    """Paths that each break a naive shell use. ``marker`` is created if a command runs."""
    return {
        "space": "/d/my web/a",
        "squote": "/d/it's",
        "dquote": '/d/say "hi"',
        "subst": f"/d/w$(touch${{IFS}}{marker})",
        "backtick": f"/d/`touch {marker}`",
        "semicolon": f"/d/a;touch {marker}",
        "glob": "data/*",
        "brace": "/d/{a,b}",
        "tilde": "~/d/t",
        "backslash": "/d/a\\b",
        "bang": "/d/a!b",
        "newline": "/d/line\nbreak",
        "dollar": "/d/$HOME",
        "unicode": "/données/é",
    }


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("")  # a file the glob "data/*" would match
    (tmp_path / "argv.py").write_text(STAND_IN)
    mapping = _hostile(marker)
    weights = {d: 1 / len(mapping) for d in mapping}
    return tmp_path, marker, mapping, weights


def _run_bash(script, cwd):
    out = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                         env=dict(os.environ, PY=sys.executable))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _expected_args(weights, mapping):
    return [tok for d, w in weights.items() for tok in (repr(w), mapping[d])]


def test_megatron_deepspeed_bash_array_survives_hostile_paths(hostile):
    tmp_path, marker, mapping, weights = hostile
    paths = data_paths_from_mapping(mapping, source="hostile.yaml")
    text = export_mixture(weights, paths, "megatron-deepspeed")
    (tmp_path / "ds_data_args.sh").write_text(text, encoding="utf-8")
    # The README's usage: source the file, pass the array quoted.
    argv = _run_bash('source ds_data_args.sh && "$PY" argv.py --num-layers 2 "${DATA_ARGS[@]}"', tmp_path)
    assert argv == ["--num-layers", "2", "--data-path", *_expected_args(weights, mapping)]
    assert not marker.exists()
    assert parse_export(text, "megatron-deepspeed", paths) == pytest.approx(weights, rel=1e-12)


def test_megatron_deepspeed_argv_parses_like_megatron_deepspeed(hostile):
    """Megatron-DeepSpeed declares --data-path nargs='*'; its argparse gets every pair back."""
    import argparse

    tmp_path, marker, mapping, weights = hostile
    paths = data_paths_from_mapping({"a": {"train": mapping["space"], "valid": mapping["subst"]},
                                     "b": mapping["newline"]})
    text = export_mixture({"a": 0.5, "b": 0.5}, paths, "megatron-deepspeed")
    (tmp_path / "ds.sh").write_text(text, encoding="utf-8")
    argv = _run_bash('source ds.sh && "$PY" argv.py "${DATA_ARGS[@]}" --seq-length 8', tmp_path)
    parser = argparse.ArgumentParser()
    for flag in ("--train-data-path", "--valid-data-path", "--test-data-path"):
        parser.add_argument(flag, nargs="*", default=None)
    parser.add_argument("--seq-length", type=int)
    args = parser.parse_args(argv)
    assert args.train_data_path == ["0.5", mapping["space"], "0.5", mapping["newline"]]
    assert args.valid_data_path == ["1.0", mapping["subst"]] and args.test_data_path is None
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["megatron", "megatron-deepspeed"])
def test_leading_dash_refused_for_command_lines(fmt):
    paths = data_paths_from_mapping({"a": "--data-path", "b": "/p/b"}, source="dash.yaml")
    with pytest.raises(InputError) as err:
        export_mixture({"a": 0.5, "b": 0.5}, paths, fmt)
    for needle in (fmt, "'--data-path'", "domain 'a'", "dash.yaml", "'-'", "./--data-path"):
        assert needle in str(err.value), (needle, str(err.value))


def test_leading_dash_is_fine_in_files_megatron_reads(megatron_utils):
    paths = data_paths_from_mapping({"a": "--a", "b": "-b"})
    text = export_mixture({"a": 0.5, "b": 0.5}, paths, "megatron-data-args")
    assert megatron_utils.get_blend_from_list(text.split()) == (["--a", "-b"], [0.5, 0.5])
    assert parse_export(text, "megatron-data-args", paths) == {"a": 0.5, "b": 0.5}


def test_megatron_line_refuses_every_shell_special_path(hostile):
    tmp_path, marker, mapping, weights = hostile
    for domain, path in mapping.items():
        if domain == "unicode":
            continue
        paths = data_paths_from_mapping({domain: path, "safe": "/p/safe"}, source="hostile.yaml")
        with pytest.raises(InputError) as err:
            export_mixture({domain: 0.5, "safe": 0.5}, paths, "megatron")
        assert repr(path) in str(err.value) and f"domain {domain!r}" in str(err.value)
        assert "megatron-data-args" in str(err.value)  # says what to use instead


def test_megatron_line_pasted_or_spliced_gives_the_exact_argv(tmp_path):
    """The inert characters the `megatron` line keeps reach argv unchanged both ways the line
    is used: pasted after --data-path, or spliced unquoted with $(cat FILE)."""
    (tmp_path / "argv.py").write_text(STAND_IN)
    mapping = {"u": "/données/é_1", "odd": "rel/a=b,c@d%e+f:g.h-i", "plain": "/p/web_text_document"}
    weights = {"u": 0.5, "odd": 0.25, "plain": 0.25}
    text = export_mixture(weights, data_paths_from_mapping(mapping), "megatron")
    (tmp_path / "blend.txt").write_text(text, encoding="utf-8")
    want = ["--data-path", *_expected_args(weights, mapping)]
    assert _run_bash('"$PY" argv.py --data-path ' + text, tmp_path) == want
    assert _run_bash('"$PY" argv.py --data-path $(cat blend.txt)', tmp_path) == want


def test_megatron_data_args_file_as_megatron_lm_reads_it(hostile, megatron_utils):
    """Megatron-LM: get_blend_from_list(open(--data-args-path).read().split())."""
    tmp_path, marker, mapping, weights = hostile
    kept = {d: p for d, p in mapping.items() if not any(c.isspace() for c in p)}
    kept["dash"] = "--d/x"
    w = {d: 1 / len(kept) for d in kept}
    paths = data_paths_from_mapping(kept)
    (tmp_path / "data_args.txt").write_text(export_mixture(w, paths, "megatron-data-args"), encoding="utf-8")
    with open(tmp_path / "data_args.txt", "r") as f:
        prefixes, got = megatron_utils.get_blend_from_list(f.read().split())
    assert prefixes == list(kept.values()) and got == list(w.values())
    for domain in ("space", "newline"):
        bad = data_paths_from_mapping({domain: mapping[domain], "b": "/p/b"}, source="ws.yaml")
        with pytest.raises(InputError, match=f"domain '{domain}'.*ws.yaml.*whitespace"):
            export_mixture({domain: 0.5, "b": 0.5}, bad, "megatron-data-args")
    assert not marker.exists()


def test_megatron_per_split_json_carries_any_path(hostile, megatron_utils):
    tmp_path, marker, mapping, weights = hostile
    mapping = {**mapping, "dash": "--d/x"}
    weights = {d: 1 / len(mapping) for d in mapping}
    data = json.loads(export_mixture(weights, data_paths_from_mapping(mapping), "megatron-per-split"))
    prefixes, got = megatron_utils.get_blend_from_list(data["train"])
    assert prefixes == list(mapping.values()) and got == list(weights.values())


# ----------------------------------------------------------------------------- manifest sizes


def _manifest(tmp_path, sizes, name="manifest.yaml"):
    """A domains manifest with {domain: (train tokens, train documents)}; no stores needed."""
    domains = {d: {"train": {"prefix": f"{d}/train_text_document", "documents": docs, "tokens": tokens},
                   "valid": {"prefix": f"{d}/valid_text_document", "documents": 1, "tokens": 10}}
               for d, (tokens, docs) in sizes.items()}
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"schema": "autoscale.domains/v1", "tokenizer": {"kind": "hf"},
                                    "seed": 0, "valid_fraction": 0.05, "domains": domains}))
    return path


def test_hf_probabilities_are_per_example(tmp_path):
    """interleave_datasets draws examples: long-document domains get proportionally fewer."""
    paths = load_data_paths(_manifest(tmp_path, {"long": (10_000, 100), "short": (10_000, 1000)}))
    obj = json.loads(export_mixture({"long": 0.5, "short": 0.5}, paths, "hf", seed=5))
    assert obj["mean_document_tokens"] == [100.0, 10.0]
    assert obj["probabilities"] == pytest.approx([1 / 11, 10 / 11], rel=1e-12)
    assert obj["seed"] == 5 and "per example" in obj["probabilities_are"]
    assert parse_export(json.dumps(obj), "hf", paths) == pytest.approx({"long": 0.5, "short": 0.5}, rel=1e-12)


def test_hf_token_shares_follow_the_weights_under_interleave_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    paths = load_data_paths(_manifest(tmp_path, {"long": (10_000, 100), "short": (10_000, 1000)}))
    weights = {"long": 0.3, "short": 0.7}
    obj = json.loads(export_mixture(weights, paths, "hf", seed=1))
    parts = [datasets.Dataset.from_dict({"n": [int(n)] * 40_000}) for n in obj["mean_document_tokens"]]
    mixed = datasets.interleave_datasets(parts, probabilities=obj["probabilities"], seed=obj["seed"],
                                         stopping_strategy=obj["stopping_strategy"])
    lengths = mixed.select(range(30_000))["n"]
    share_long = sum(n for n in lengths if n == 100) / sum(lengths)
    assert abs(share_long - weights["long"]) < 0.03  # unconverted it would be 0.81


def test_hf_with_a_hand_written_map_and_a_manifest(tmp_path):
    manifest = _manifest(tmp_path, {"a": (1000, 10), "b": (1000, 100)})
    (tmp_path / "p.yaml").write_text("a: hub/a\nb: [hub/b1, hub/b2]\n")
    paths = load_data_paths(tmp_path / "p.yaml", manifest=manifest)
    assert not paths.megatron_prefixes and paths.train_stats["a"].mean_document_tokens == 100
    obj = json.loads(export_mixture({"a": 0.5, "b": 0.5}, paths, "hf"))
    assert obj["datasets"] == ["hub/a", "hub/b1", "hub/b2"]
    assert obj["probabilities"] == pytest.approx([0.5 / 100 / 0.055, 0.25 / 10 / 0.055, 0.25 / 10 / 0.055])
    assert parse_export(json.dumps(obj), "hf", paths) == pytest.approx({"a": 0.5, "b": 0.5}, rel=1e-12)


def test_hf_without_sizes_states_the_conversion(caplog):
    paths = data_paths_from_mapping({"a": "/p/a", "b": "/p/b"}, source="p.yaml")
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        obj = json.loads(export_mixture({"a": 0.25, "b": 0.75}, paths, "hf"))
    assert obj["probabilities"] == [0.25, 0.75] and "mean_document_tokens" not in obj
    assert "token weights, unconverted" in obj["probabilities_are"]
    assert "document lengths of p.yaml are unknown" in caplog.text


@pytest.mark.parametrize("fmt", ["hf", "mosaicml", "litdata", "nanotron", "olmo-core"])
def test_formats_that_cannot_read_megatron_stores_warn_on_a_manifest(tmp_path, caplog, fmt):
    paths = load_data_paths(_manifest(tmp_path, {"a": (1000, 10), "b": (1000, 100)}))
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        export_mixture({"a": 0.5, "b": 0.5}, paths, fmt)
    assert f"{fmt} cannot read Megatron indexed stores" in caplog.text and "manifest.yaml" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        export_mixture({"a": 0.5, "b": 0.5}, paths, "megatron")
        export_mixture({"a": 0.5, "b": 0.5}, data_paths_from_mapping({"a": "/x", "b": "/y"}), fmt)
    assert "cannot read Megatron" not in caplog.text


# ----------------------------------------------------------------------------- olmo-core epoch cap


def _olmo(text):
    return {s["source_name"]: s for s in yaml.safe_load(text)["sources"]}


def _mixture(weights, total, provenance):
    from autoscale_ds.formats.schemas import Mixture

    return Mixture(total, weights, {d: w * total for d, w in weights.items()}, "autoscale", provenance)


def test_olmo_core_repetition_from_predicted_ceilings(tmp_path):
    paths = load_data_paths(_manifest(tmp_path, {"a": (100_000, 10), "b": (2_000_000, 10)}))
    mixture = _mixture({"a": 0.25, "b": 0.75}, 1_000_000, {"guards": {"ceiling": {"a": 0.3, "*": 0.9}}})
    text = export_mixture(mixture, paths, "olmo-core")
    sources = _olmo(text)
    assert sources["a"]["max_repetition_ratio"] == pytest.approx(3.0)  # 0.3 * 1M / 100K
    assert "max_source_fraction" not in sources["a"]
    assert sources["b"]["max_repetition_ratio"] == 1.0  # 0.9 * 1M / 2M = 0.45 of b's data
    assert sources["b"]["max_source_fraction"] == pytest.approx(0.45)
    assert "guards.ceiling" in text.splitlines()[1]
    assert parse_export(text, "olmo-core", paths) == {"a": 0.25, "b": 0.75}


def test_olmo_core_repetition_from_max_epochs_and_default(tmp_path, caplog):
    paths = data_paths_from_mapping({"a": "/p/a", "b": "/p/b"})
    for provenance in ({"max_epochs": 4}, {"guards": {"max_epochs": 4.0}}):
        text = export_mixture(_mixture({"a": 0.5, "b": 0.5}, 1e6, provenance), paths, "olmo-core")
        assert [s["max_repetition_ratio"] for s in _olmo(text).values()] == [4.0, 4.0]
        assert "max_epochs 4 from the mixture's provenance" in text
    text = export_mixture(_mixture({"a": 0.5, "b": 0.5}, 1e6, {"fits": {}}), paths, "olmo-core")
    assert [s["max_repetition_ratio"] for s in _olmo(text).values()] == [1.0, 1.0]
    assert "no epoch cap in the mixture: 1.0, OLMo-core's default" in text
    # A ceiling without the domain's size cannot become a number of passes: warned, 1.0.
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        text = export_mixture(_mixture({"a": 0.5, "b": 0.5}, 1e6, {"guards": {"ceiling": {"a": 0.6}}}),
                              paths, "olmo-core")
    assert _olmo(text)["a"]["max_repetition_ratio"] == 1.0 and "train tokens are unknown" in caplog.text


def test_olmo_core_warns_when_the_mixture_needs_more_passes_than_allowed(tmp_path, caplog):
    paths = load_data_paths(_manifest(tmp_path, {"a": (100_000, 10), "b": (2_000_000, 10)}))
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.formats.export"):
        export_mixture(_mixture({"a": 0.5, "b": 0.5}, 1_000_000, {}), paths, "olmo-core")
    assert "domain 'a' needs 5 passes" in caplog.text and "Insufficient tokens" in caplog.text
    assert "domain 'b'" not in caplog.text


def test_export_seed_must_be_a_natural_number(paths):
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(InputError, match="seed"):
            export_mixture(WEIGHTS, paths, "hf", seed=bad)


def test_nul_in_a_path_is_refused():
    with pytest.raises(InputError, match="'web'.*NUL"):
        data_paths_from_mapping({"web": "/p/a\0b"})
