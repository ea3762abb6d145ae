"""autoscale_ds.integrations.megatron: mixture -> megatron-core blends, checked by building real
megatron-core BlendedDatasets over real indexed stores and counting where samples come from.

Every store holds tokens from its own id range, so a sample's tokens prove which store it was
cut from, independently of the ``dataset_id`` megatron tags it with.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from autoscale_ds.data.indexed import build_store
from autoscale_ds.formats.datapaths import data_paths_from_mapping
from autoscale_ds.errors import InputError
from autoscale_ds.formats.export import export_mixture
from autoscale_ds.formats.schemas import Mixture, save_mixture
from autoscale_ds.integrations.megatron import (PER_SPLIT, blend_domains, blend_from_mixture,
                                                blend_per_split_from_mixture, gpt_dataset_config)

VOCAB = 1000  # NullTokenizer: ids 0..999, end-of-document id 1000 (never in our stores)
RANGE = 60  # store i holds ids in [1 + RANGE*i, RANGE*(i+1)]
SEQ_LEN = 16
TOKENS = {"web": 400_000, "code": 300_000, "books": 200_000, "wiki": 100_000, "math": 0}
STORES = ["web", "code_a", "code_b", "books_train", "books_valid", "books_test",
          "wiki_train", "wiki_valid"]


def _map(d):
    return {
        "web": f"{d}/web",
        "code": {f"{d}/code_a": 3, f"{d}/code_b": 1},  # shards: shares 0.75 / 0.25
        "books": {"train": f"{d}/books_train", "valid": f"{d}/books_valid", "test": f"{d}/books_test"},
        "wiki": {"train": f"{d}/wiki_train", "valid": f"{d}/wiki_valid"},
        "math": f"{d}/math",  # weight 0: left out, so its (absent) files are never looked at
    }


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One real Megatron-format store per entry of STORES: 150 documents of 20-80 tokens."""
    d = tmp_path_factory.mktemp("megatron_stores")
    rng = np.random.default_rng(0)
    for i, name in enumerate(STORES):
        docs = [rng.integers(1 + RANGE * i, RANGE * (i + 1) + 1, size=int(rng.integers(20, 81)))
                for _ in range(150)]
        build_store(d / name, docs, np.uint16)
    return d


@pytest.fixture(scope="module")
def paths(store_dir):
    return data_paths_from_mapping(_map(store_dir), source="paths.yaml")


@pytest.fixture(scope="module")
def mixture():
    return Mixture.from_tokens(TOKENS, "ddo")


@pytest.fixture(scope="module")
def tokenizer():
    # The smallest real megatron-core tokenizer: the "null" library (what --tokenizer-type
    # NullTokenizer builds), a DefaultTokenizerText; GPTDataset reads vocab_size and eod.
    pytest.importorskip("megatron.core")
    tokenizers = pytest.importorskip("megatron.core.tokenizers")
    return tokenizers.MegatronTokenizer.from_pretrained(metadata_path={"library": "null"},
                                                        vocab_size=VOCAB)


def _build(config, sizes):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    # torch.distributed is not initialised: the builder then builds everything in-process.
    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()


def _store_of(tokens):
    """The store a sample was cut from, read off its token ids."""
    lo, hi = int(tokens.min()), int(tokens.max())
    assert (lo - 1) // RANGE == (hi - 1) // RANGE, "a sample mixes two stores"
    return STORES[(lo - 1) // RANGE]


def _check_fractions(dataset, prefixes, weights):
    """Every sample's dataset_id, store (from its tokens) and the blend's weights agree."""
    n = len(dataset)
    ids = np.array([int(dataset[i]["dataset_id"]) for i in range(n)])
    assert np.array_equal(ids, np.asarray(dataset.dataset_index))
    stores = [_store_of(dataset[i]["tokens"]) for i in range(0, n, 7)]
    assert stores == [prefixes[k].rsplit("/", 1)[1] for k in ids[::7]]
    # Tolerance: megatron's build_blending_indices is deterministic, not random: it gives each
    # sample to the dataset lagging furthest behind weight x position, so every count stays
    # within 2 samples of weight x n (largest gap measured over 200 random blends of 2-12
    # datasets: 1.7). Hence 3/n, ~0.0003 here; an i.i.d. sampler would be off by ~0.015.
    fractions = np.bincount(ids, minlength=len(prefixes)) / n
    assert fractions == pytest.approx(weights, abs=3 / n)
    return fractions


# ----------------------------------------------------------------------------- blends


def test_blend_weights_are_domain_weight_times_share(paths, mixture, store_dir):
    prefixes, weights = blend_from_mixture(mixture, paths)
    d = store_dir
    assert prefixes == [f"{d}/web", f"{d}/code_a", f"{d}/code_b", f"{d}/books_train", f"{d}/wiki_train"]
    assert weights == pytest.approx([0.4, 0.225, 0.075, 0.2, 0.1], abs=1e-15)
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-15)
    assert blend_domains(prefixes, paths) == ["web", "code", "code", "books", "wiki"]


def test_blend_matches_the_megatron_export_read_by_megatron(paths, mixture):
    utils = pytest.importorskip("megatron.core.datasets.utils")
    exported = utils.get_blend_from_list(export_mixture(mixture.weights, paths, "megatron").split())
    assert blend_from_mixture(mixture, paths) == exported  # bit for bit: floats written with repr


def test_files_as_inputs(paths, mixture, store_dir, tmp_path):
    save_mixture(tmp_path / "mixture.json", mixture)
    (tmp_path / "paths.json").write_text(json.dumps(_map(store_dir)))
    assert blend_from_mixture(tmp_path / "mixture.json", str(tmp_path / "paths.json")) == \
        blend_from_mixture(mixture.weights, paths)


def test_per_split_blends(paths, mixture, store_dir):
    train, valid, test = blend_per_split_from_mixture(mixture, paths)
    assert train == blend_from_mixture(mixture, paths)
    assert valid[0] == [f"{store_dir}/books_valid", f"{store_dir}/wiki_valid"]
    assert valid[1] == pytest.approx([2 / 3, 1 / 3], abs=1e-15)  # renormalised over its domains
    assert test == ([f"{store_dir}/books_test"], [1.0])
    assert blend_from_mixture(mixture, paths, "valid") == valid


def test_per_split_none_where_the_map_has_no_split(store_dir):
    paths = data_paths_from_mapping({"a": f"{store_dir}/web", "b": f"{store_dir}/code_a"})
    blends = blend_per_split_from_mixture({"a": 0.5, "b": 0.5}, paths)
    assert blends[1:] == [None, None]
    with pytest.raises(InputError, match="no 'valid' paths"):
        blend_from_mixture({"a": 0.5, "b": 0.5}, paths, "valid")


def test_error_mixture_domain_missing_from_map(paths):
    with pytest.raises(InputError, match=r"domain 'papers' has no entry in data-paths file paths.yaml"):
        blend_from_mixture({"web": 0.5, "papers": 0.5}, paths)


def test_error_missing_store_is_named(store_dir):
    paths = data_paths_from_mapping({"a": f"{store_dir}/web", "b": f"{store_dir}/nope"}, "m.yaml")
    named = r"domain 'b' in data-paths file m.yaml: prefix .*nope' has no .*nope\.bin"
    with pytest.raises(InputError, match=named):
        blend_from_mixture({"a": 0.5, "b": 0.5}, paths)
    assert blend_from_mixture({"a": 0.5, "b": 0.5}, paths, check_files=False)[0][1].endswith("nope")


def test_error_prefix_with_suffix_gets_a_hint(store_dir):
    paths = data_paths_from_mapping({"a": f"{store_dir}/web.bin"})
    with pytest.raises(InputError, match=r"without the suffix: use '.*/web'"):
        blend_from_mixture({"a": 1.0}, paths)


def test_error_idx_missing(store_dir, tmp_path):
    (tmp_path / "half.bin").write_bytes(b"")
    paths = data_paths_from_mapping({"a": str(tmp_path / "half")})
    with pytest.raises(InputError, match=r"half\.idx"):
        blend_from_mixture({"a": 1.0}, paths)


def test_remote_prefixes_are_not_checked():
    paths = data_paths_from_mapping({"a": "s3://bucket/web", "b": "msc://profile/code"})
    assert blend_from_mixture({"a": 0.25, "b": 0.75}, paths) == (
        ["s3://bucket/web", "msc://profile/code"], [0.25, 0.75])


def test_error_split_and_zero_weight_and_unknown_prefix(paths, store_dir):
    with pytest.raises(InputError, match="unknown split 'dev'"):
        blend_from_mixture(TOKENS, paths, "dev")
    with pytest.raises(InputError, match="valid blend would be empty"):
        blend_from_mixture({"web": 0.5, "code": 0.5, "books": 0.0, "wiki": 0.0}, paths, "valid")
    with pytest.raises(InputError, match="not in data-paths file"):
        blend_domains([f"{store_dir}/elsewhere"], paths)
    with pytest.raises(InputError, match="paths must be a DataPaths"):
        blend_from_mixture({"web": 1.0}, {"web": "/x"})


def test_blend_functions_import_neither_torch_nor_megatron(mixture, tmp_path):
    save_mixture(tmp_path / "m.json", mixture)
    (tmp_path / "p.json").write_text(json.dumps({d: f"/data/{d}" for d in TOKENS}))
    files = f"{str(tmp_path / 'm.json')!r}, {str(tmp_path / 'p.json')!r}"
    code = ("import sys, json\nfrom autoscale_ds.integrations.megatron import blend_from_mixture\n"
            f"blend_from_mixture({files}, check_files=False)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# ----------------------------------------------------------------------------- real datasets


def test_blended_dataset_draws_the_mixture(paths, mixture, tokenizer):
    config = gpt_dataset_config(mixture, paths, sequence_length=SEQ_LEN, random_seed=1234,
                                tokenizer=tokenizer, split="90,5,5")
    train, valid, test = _build(config, [10_000, 300, 100])
    prefixes, weights = config.blend
    assert type(train).__name__ == "BlendedDataset" and len(train) >= 10_000
    fractions = _check_fractions(train, prefixes, weights)
    by_domain = {}
    for domain, f in zip(blend_domains(prefixes, paths), fractions):
        by_domain[domain] = by_domain.get(domain, 0.0) + f
    expected = {"web": 0.4, "code": 0.3, "books": 0.2, "wiki": 0.1}
    assert by_domain == pytest.approx(expected, abs=2 * 3 / len(train))  # code sums two shards
    _check_fractions(valid, prefixes, weights)  # same blend, the documents of the valid range
    assert len(test) >= 100


def test_per_split_blended_datasets(paths, mixture, tokenizer):
    config = gpt_dataset_config(mixture, paths, sequence_length=SEQ_LEN, random_seed=7,
                                tokenizer=tokenizer, split=PER_SPLIT)
    train_blend, valid_blend, test_blend = config.blend_per_split
    train, valid, test = _build(config, [10_000, 3_000, 50])
    _check_fractions(train, *train_blend)
    _check_fractions(valid, *valid_blend)  # books_valid 2/3, wiki_valid 1/3
    # A one-prefix blend is built as a plain GPTDataset: no dataset_id, all from books_test.
    assert type(test).__name__ == "GPTDataset"
    assert {_store_of(test[i]["tokens"]) for i in range(len(test))} == {"books_test"}


def test_config_fields_and_defaults(paths, mixture, tokenizer):
    config = gpt_dataset_config(mixture, paths, sequence_length=SEQ_LEN, random_seed=1,
                                tokenizer=tokenizer, eod_mask_loss=True, mid_level_dataset_surplus=0.01)
    assert config.blend == blend_from_mixture(mixture, paths) and config.split == "969,30,1"
    flags = (config.eod_mask_loss, config.reset_position_ids, config.reset_attention_mask)
    assert flags == (True, False, False)
    assert config.mid_level_dataset_surplus == 0.01 and config.blend_per_split is None


def test_config_errors(paths, mixture, tokenizer):
    def build(**kw):
        args = {"sequence_length": SEQ_LEN, "random_seed": 1, "tokenizer": tokenizer, **kw}
        return gpt_dataset_config(mixture, paths, **args)

    with pytest.raises(InputError, match="GPTDatasetConfig has no field 'seq_len'"):
        build(seq_len=3)
    with pytest.raises(InputError, match="'blend' is set from the mixture"):
        build(blend=(["a"], [1.0]))
    with pytest.raises(InputError, match="split must be up to three comma-separated ratios"):
        build(split="train")
    with pytest.raises(InputError, match="positive sum"):
        build(split="0,0,0")
    with pytest.raises(InputError, match="sequence_length must be a positive integer"):
        build(sequence_length=0)
    with pytest.raises(InputError, match="tokenizer is required"):
        build(tokenizer=None)
    with pytest.raises(InputError, match="megatron-core rejected the GPTDatasetConfig"):
        build(fast_cache_load=True)  # megatron asserts that needs path_to_cache


def test_config_without_megatron_names_the_extra(paths, mixture, monkeypatch):
    monkeypatch.setitem(sys.modules, "megatron.core.datasets.gpt_dataset", None)  # import fails
    with pytest.raises(InputError, match=r"needs megatron-core .*pip install 'autoscale-ds\[megatron\]'"):
        gpt_dataset_config(mixture, paths, sequence_length=SEQ_LEN, random_seed=1, tokenizer=object())
