"""Tests for autoscale_ds.export: every format round-trips, matches upstream readers, and
every bad input fails with an InputError that names the culprit."""

import json
import logging
import math
import os
import shlex
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscale_ds.errors import InputError
from autoscale_ds.export import (
    FORMATS,
    DataPaths,
    data_paths_from_mapping,
    export_mixture,
    load_data_paths,
    parse_export,
)

ALL_FORMATS = list(FORMATS)
EXPECTED_FORMATS = {
    "megatron", "megatron-data-args", "megatron-per-split", "megatron-deepspeed", "gpt-neox",
    "hf", "mosaicml", "litgpt", "nanotron", "olmo-core",
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
    assert set(FORMATS) == EXPECTED_FORMATS


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
    assert export_mixture(w, paths, "megatron-deepspeed") == "--data-path 0.25 /p/a 0.75 /p/b\n"
    assert json.loads(export_mixture(w, paths, "megatron-per-split")) == {
        "train": ["0.25", "/p/a", "0.75", "/p/b"], "valid": None, "test": None}
    assert yaml.safe_load(export_mixture(w, paths, "mosaicml")) == {
        "streams": {"a": {"local": "/p/a", "proportion": 0.25}, "b": {"local": "/p/b", "proportion": 0.75}}}
    assert yaml.safe_load(export_mixture(w, paths, "nanotron")) == {
        "dataset": {"dataset_folder": ["/p/a", "/p/b"], "dataset_weights": [0.25, 0.75]}}
    assert yaml.safe_load(export_mixture(w, paths, "olmo-core")) == {"sources": [
        {"source_name": "a", "target_ratio": 0.25, "paths": ["/p/a"]},
        {"source_name": "b", "target_ratio": 0.75, "paths": ["/p/b"]}]}
    assert json.loads(export_mixture(w, paths, "litgpt")) == {
        "datasets": [{"input_dir": "/p/a"}, {"input_dir": "/p/b"}], "weights": [0.25, 0.75],
        "iterate_over_all": False}


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


def test_megatron_deepspeed_per_split_flags_and_quoting():
    paths = data_paths_from_mapping({"a": {"train": "/p/a $x", "test": "/p/at"}, "b": "/p/b"})
    text = export_mixture({"a": 0.5, "b": 0.5}, paths, "megatron-deepspeed")
    tokens = shlex.split(text)
    assert tokens == ["--train-data-path", "0.5", "/p/a $x", "0.5", "/p/b",
                      "--test-data-path", "1.0", "/p/at"]
    assert parse_export(text, "megatron-deepspeed", paths) == {"a": 0.5, "b": 0.5}
    # The test split vanishes with a's weight, but the map is per-split: no --data-path + --split.
    text = export_mixture({"a": 0.0, "b": 1.0}, paths, "megatron-deepspeed")
    assert text == "--train-data-path 1.0 /p/b\n"


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
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.export"):
        obj = yaml.safe_load(export_mixture({"a": 0.5, "b": 0.5}, paths, "gpt-neox"))
    assert obj["valid-data-paths"] == obj["test-data-paths"] == ["/p/a", "/p/b"]
    assert "valid-data-paths" in caplog.text


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
    code = "import sys, autoscale_ds.export; sys.exit(any(m in sys.modules for m in "
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
    ("nan.json", '{"web": {"/p/a": NaN}}', ["nan.json", "'web'", "nan"]),
    ("emptypath.yaml", "web: ''\n", ["emptypath.yaml", "'web'", "empty"]),
    ("emptylist.yaml", "web: []\n", ["emptylist.yaml", "'web'", "empty"]),
    ("nopaths.yaml", "web:\n", ["nopaths.yaml", "'web'", "no paths"]),
    ("split.yaml", "web: {train: /p/a, eval: /p/b}\n", ["split.yaml", "'web'", "'eval'", "split"]),
    ("notrain.yaml", "web: {valid: /p/a}\n", ["notrain.yaml", "'web'", "train"]),
    ("syntax.yaml", "web: [/p/a\n", ["syntax.yaml", "parse"]),
    ("syntax.json", '{"web": "/p/a",}', ["syntax.json", "parse"]),
    ("dupe.yaml", "web: /p/a\nweb: /p/b\n", ["dupe.yaml", "duplicate", "web"]),
    ("dupe.json", '{"web": "/p/a", "web": "/p/b"}', ["dupe.json", "duplicate", "web"]),
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
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.export"):
        text = export_mixture({"web": 1.0}, paths, "megatron")
    assert text == "1.0 /data/web/web_text_document\n"
    assert "code" in caplog.text and "paths.yaml" in caplog.text


def test_whitespace_path_rejected_by_megatron():
    paths = data_paths_from_mapping({"a": "/p/a b", "b": "/p/b"}, source="ws.yaml")
    with pytest.raises(InputError, match="'/p/a b'.*whitespace"):
        export_mixture({"a": 0.5, "b": 0.5}, paths, "megatron")
    assert parse_export(export_mixture({"a": 0.5, "b": 0.5}, paths, "hf"), "hf", paths) == {"a": 0.5, "b": 0.5}


# ----------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize("fmt, text, needle", [
    ("megatron", "0.5 /p/a 0.5", "pairs"),
    ("megatron", "", "pairs"),
    ("megatron", "abc /data/web/web_text_document", "'abc'"),
    ("megatron-data-args", "-1 /data/web/web_text_document", "'-1'"),
    ("megatron-per-split", "[1, 2", "does not parse"),
    ("hf", "{\"datasets\":\t[\"/data/web/web_text_document\"], \"probabilities\": [NaN]}", "nan"),
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
    from autoscale_ds.export import export_mixture, load_data_paths

    paths = load_data_paths(prepared.root / "manifest.yaml")
    domains = list(prepared.domains)
    weights = {d: 1.0 / len(domains) for d in domains}
    neox = yaml.safe_load(export_mixture(weights, paths, "gpt-neox"))
    assert neox["train-data-paths"] == [str((prepared.root / prepared.domains[d].train.prefix).resolve())
                                        for d in domains]
    assert neox["valid-data-paths"][0].endswith(f"{domains[0]}/valid_text_document")
    for prefix in neox["train-data-paths"] + neox["valid-data-paths"]:
        assert os.path.exists(prefix + ".bin") and os.path.exists(prefix + ".idx")
