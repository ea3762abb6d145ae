"""Token stores in Megatron's indexed format: round trips, byte identity with megatron-core,
and one clear error per kind of corruption."""

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscale_ds.data.indexed import (CorruptDataError, IndexedTokenStore, IndexedTokenWriter,
                                       build_store, merge_stores, optimal_token_dtype)
from autoscale_ds.errors import InputError

DTYPES = [np.uint16, np.int32]  # numpy type classes: megatron-core's DType needs __name__


def documents(dtype, min_tokens=0):
    info = np.iinfo(dtype)
    docs = st.lists(st.lists(st.integers(int(info.min), int(info.max)), max_size=30), max_size=10)
    return docs.filter(lambda d: sum(map(len, d)) >= min_tokens)


def assert_store_holds(store, docs, dtype):
    assert store.dtype == np.dtype(dtype)
    assert len(store) == store.num_documents == len(docs)
    assert store.num_tokens == sum(map(len, docs))
    assert store.sequence_lengths.dtype == np.int32
    assert store.sequence_lengths.tolist() == [len(d) for d in docs]
    assert store.document_indices.tolist() == list(range(len(docs) + 1))
    for i, doc in enumerate(docs):
        assert store[i].tolist() == doc
    assert store.tokens_view().tolist() == [t for d in docs for t in d]


# ------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip(dtype, data):
    docs = data.draw(documents(dtype))
    with tempfile.TemporaryDirectory() as tmp:
        with build_store(os.path.join(tmp, "web"), docs, dtype) as store:
            assert_store_holds(store, docs, dtype)
        with IndexedTokenStore(os.path.join(tmp, "web")) as reopened:
            assert_store_holds(reopened, docs, dtype)


def test_zero_document_store(tmp_path):
    with IndexedTokenWriter(tmp_path / "empty", np.uint16) as writer:
        store = writer.finalize()
    assert (len(store), store.num_documents, store.num_tokens) == (0, 0, 0)
    assert store.document_indices.tolist() == [0]
    assert store.tokens_view().size == 0
    assert (tmp_path / "empty.bin").stat().st_size == 0


def test_clean_with_exit_finalizes(tmp_path):
    with IndexedTokenWriter(tmp_path / "web", np.int32) as writer:
        writer.add_document([5, 6])
    assert IndexedTokenStore(tmp_path / "web")[0].tolist() == [5, 6]
    with pytest.raises(ValueError, match="already finalized"):
        writer.add_document([1])


def test_store_access(tmp_path):
    store = build_store(tmp_path / "web", [[1, 2, 3, 4], [], [9]], np.uint16)
    assert store[-1].tolist() == [9] and store[1].size == 0
    assert store.get(0, offset=1).tolist() == [2, 3, 4]
    assert store.get(0, offset=1, length=2).tolist() == [2, 3]
    assert store.get(0, offset=4).tolist() == []
    assert np.shares_memory(store[0], store.tokens_view())  # a view, not a copy
    assert not store[0].flags.writeable
    with pytest.raises(IndexError, match="3 sequences"):
        store[3]
    with pytest.raises(IndexError, match="4 tokens"):
        store.get(0, offset=2, length=3)
    with pytest.raises(TypeError):
        store[0.0]
    assert repr(store) == (f"IndexedTokenStore({str(tmp_path / 'web')!r}, dtype=uint16, "
                           "sequences=3, documents=3, tokens=5)")
    view = store[0]
    store.close()
    assert view.tolist() == [1, 2, 3, 4]  # views handed out survive close
    with pytest.raises(ValueError, match="closed"):
        store[0]
    assert "closed" in repr(store)


@pytest.mark.parametrize("dtype, docs, expected", [
    (np.uint16, [[5, 9, 2], [], [65535, 0]], (0, 65535)),
    (np.int32, [[7, -3], [1 << 30]], (-3, 1 << 30)),
    (np.uint16, [[], []], (0, -1)),
])
def test_token_id_range_scans_in_chunks(tmp_path, monkeypatch, dtype, docs, expected):
    from autoscale_ds.data import indexed

    monkeypatch.setattr(indexed, "_ID_SCAN_CHUNK_TOKENS", 2)  # several chunks, one partial
    monkeypatch.setattr(indexed, "_ID_RANGE_CACHE", {})
    store = build_store(tmp_path / "s", docs, dtype)
    assert store.token_id_range() == expected


def test_token_id_range_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    from autoscale_ds.data import indexed

    monkeypatch.setattr(indexed, "_ID_RANGE_CACHE", {})
    scans = []
    real_scan = indexed._scan_id_range
    monkeypatch.setattr(indexed, "_scan_id_range", lambda tokens: scans.append(1) or real_scan(tokens))
    build_store(tmp_path / "s", [[1, 2, 3]], np.uint16)
    assert IndexedTokenStore(tmp_path / "s").token_id_range() == (1, 3)
    assert IndexedTokenStore(tmp_path / "s").token_id_range() == (1, 3)
    assert len(scans) == 1  # a second opening of the same store reads no tokens
    build_store(tmp_path / "s", [[4, 700]], np.uint16)  # rewritten: new size and mtime
    assert IndexedTokenStore(tmp_path / "s").token_id_range() == (4, 700)
    assert len(scans) == 2


def test_optimal_token_dtype():
    assert optimal_token_dtype(50257) == np.uint16
    assert optimal_token_dtype(65499) == np.uint16
    assert optimal_token_dtype(65500) == np.int32
    assert optimal_token_dtype(128256) == np.int32
    with pytest.raises(InputError):
        optimal_token_dtype(0)


# --------------------------------------------------------------------------------- writer


@pytest.mark.parametrize("dtype, bad, shown", [(np.uint16, 70000, "70,000"), (np.uint16, -1, "-1"),
                                               (np.int32, 2**31, "2,147,483,648")])
def test_out_of_range_token_names_value_and_prefix(tmp_path, dtype, bad, shown):
    prefix = str(tmp_path / "web")
    with pytest.raises(InputError) as info:
        with IndexedTokenWriter(prefix, dtype) as writer:
            writer.add_document([1, 2])
            writer.add_document([3, bad])
    assert shown in str(info.value) and prefix in str(info.value)
    assert "document 1" in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("tokens", [[1.5, 2.0], [[1, 2]], 7, ["a"]])
def test_non_token_input_rejected(tmp_path, tokens):
    with pytest.raises(InputError):
        with IndexedTokenWriter(tmp_path / "web", np.int32) as writer:
            writer.add_document(tokens)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype", [np.float32, np.uint64, "not-a-dtype"])
def test_unstorable_dtype_rejected(tmp_path, dtype):
    with pytest.raises(InputError):
        IndexedTokenWriter(tmp_path / "web", dtype)
    assert os.listdir(tmp_path) == []


def test_exception_in_with_leaves_no_files_and_keeps_old_store(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedTokenWriter(tmp_path / "web", np.uint16) as writer:
            writer.add_document([1, 2, 3])
            raise RuntimeError("tokenizer crashed")
    assert os.listdir(tmp_path) == []

    build_store(tmp_path / "web", [[7, 8]], np.uint16).close()
    before = {p: (tmp_path / p).read_bytes() for p in ("web.bin", "web.idx")}
    with pytest.raises(RuntimeError):
        with IndexedTokenWriter(tmp_path / "web", np.uint16) as writer:
            writer.add_document([1, 2, 3])
            raise RuntimeError("tokenizer crashed")
    assert sorted(os.listdir(tmp_path)) == ["web.bin", "web.idx"]
    assert {p: (tmp_path / p).read_bytes() for p in before} == before


def test_store_files_get_ordinary_permissions(tmp_path):
    (tmp_path / "plain").write_bytes(b"")  # what the umask gives any new file
    build_store(tmp_path / "web", [[1]], np.uint16).close()
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    for ext in (".bin", ".idx"):
        assert (tmp_path / ("web" + ext)).stat().st_mode & 0o777 == expected


def test_tokens_stream_to_disk_before_finalize(tmp_path):
    writer = IndexedTokenWriter(tmp_path / "web", np.uint16)
    writer.add_document(np.arange(100_000) % 60_000)
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".web.bin")]
    assert len(temps) == 1 and temps[0].stat().st_size >= 100_000  # on disk, not in memory
    assert not (tmp_path / "web.bin").exists() and not (tmp_path / "web.idx").exists()
    writer.finalize().close()
    assert sorted(os.listdir(tmp_path)) == ["web.bin", "web.idx"]
    with pytest.raises(ValueError):
        writer.finalize()


# ---------------------------------------------------------------------------------- merge


@settings(max_examples=30, deadline=None)
@given(docs=documents(np.uint16), cuts=st.lists(st.integers(0, 10), max_size=4))
def test_merge_equals_one_store(docs, cuts):
    bounds = [0] + sorted(min(c, len(docs)) for c in cuts) + [len(docs)]
    with tempfile.TemporaryDirectory() as tmp:
        shards = []
        for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            shards.append(os.path.join(tmp, f"shard{k}"))
            build_store(shards[-1], docs[lo:hi], np.uint16).close()
        with merge_stores(os.path.join(tmp, "merged"), shards) as merged:
            assert_store_holds(merged, docs, np.uint16)
        build_store(os.path.join(tmp, "whole"), docs, np.uint16).close()
        for ext in (".bin", ".idx"):
            whole = Path(tmp, "whole" + ext).read_bytes()
            assert Path(tmp, "merged" + ext).read_bytes() == whole


def test_merge_rejects_mixed_dtypes_and_bad_outputs(tmp_path):
    build_store(tmp_path / "a", [[1]], np.uint16).close()
    build_store(tmp_path / "b", [[2]], np.int32).close()
    with pytest.raises(InputError, match="uint16.*int32|int32.*uint16"):
        merge_stores(tmp_path / "out", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "out.bin").exists()
    with pytest.raises(InputError, match="also an input"):
        merge_stores(tmp_path / "a", [tmp_path / "a"])
    with pytest.raises(InputError, match="no input"):
        merge_stores(tmp_path / "out", [])
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.idx", "b.bin", "b.idx"]


# ----------------------------------------------------------------- megatron-core, both ways


@pytest.fixture(scope="module")
def megatron():
    return pytest.importorskip("megatron.core.datasets.indexed_dataset")


def megatron_build(megatron, prefix, docs, dtype, use_items=False, multimodal=False):
    import torch

    builder = megatron.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype, multimodal=multimodal)
    for i, doc in enumerate(docs):
        if use_items:  # add_item needs a tensor (it calls .numpy())
            builder.add_item(torch.tensor(doc, dtype=torch.int64), mode=i % 3)
            builder.end_document()
        else:  # a list of ids, as Megatron's preprocess_data.py passes
            builder.add_document(doc, [len(doc)])
    builder.finalize(prefix + ".idx")


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_files_byte_identical_to_megatron(megatron, dtype, data):
    docs = data.draw(documents(dtype))
    use_items = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as tmp:
        build_store(os.path.join(tmp, "ours"), docs, dtype).close()
        megatron_build(megatron, os.path.join(tmp, "theirs"), docs, dtype, use_items)
        for ext in (".bin", ".idx"):
            theirs = Path(tmp, "theirs" + ext).read_bytes()
            assert Path(tmp, "ours" + ext).read_bytes() == theirs


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_megatron_reads_our_store(megatron, dtype, data):
    # min_tokens=1: megatron-core cannot mmap an empty .bin (we can).
    docs = data.draw(documents(dtype, min_tokens=1))
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "web")
        build_store(prefix, docs, dtype).close()
        dataset = megatron.IndexedDataset(prefix)
        assert len(dataset) == len(docs)
        assert dataset.index.dtype == dtype
        assert dataset.document_indices.tolist() == list(range(len(docs) + 1))
        assert dataset.sequence_lengths.tolist() == [len(d) for d in docs]
        assert [dataset[i].tolist() for i in range(len(docs))] == docs
        assert [s.tolist() for s in dataset[0:len(docs)]] == docs
        del dataset


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_we_read_megatron_store(megatron, dtype, data):
    docs = data.draw(documents(dtype))
    use_items = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as tmp:
        megatron_build(megatron, os.path.join(tmp, "web"), docs, dtype, use_items)
        with IndexedTokenStore(os.path.join(tmp, "web")) as store:
            assert_store_holds(store, docs, dtype)
            assert store.sequence_modes is None


def test_we_read_megatron_multi_sequence_documents(megatron, tmp_path):
    import torch

    builder = megatron.IndexedDatasetBuilder(str(tmp_path / "web.bin"), dtype=np.uint16)
    builder.add_document([1, 2, 3, 4, 5], [2, 3])  # one document, two sentences
    builder.add_item(torch.tensor([6]))
    builder.add_item(torch.tensor([7, 8]))
    builder.end_document()
    builder.finalize(str(tmp_path / "web.idx"))
    with IndexedTokenStore(tmp_path / "web") as store:
        assert (len(store), store.num_documents) == (4, 2)
        assert store.document_indices.tolist() == [0, 2, 4]
        assert [store[i].tolist() for i in range(4)] == [[1, 2], [3, 4, 5], [6], [7, 8]]


def test_we_read_megatron_multimodal_store(megatron, tmp_path):
    docs = [[1, 2], [3], [4, 5, 6], [7]]
    megatron_build(megatron, str(tmp_path / "mm"), docs, np.int32, use_items=True,
                   multimodal=True)
    with IndexedTokenStore(tmp_path / "mm") as store:
        assert_store_holds(store, docs, np.int32)
        assert store.sequence_modes.tolist() == [0, 1, 2, 0]
    with pytest.raises(InputError, match="multimodal"):
        merge_stores(tmp_path / "out", [tmp_path / "mm"])


def test_merge_byte_identical_to_megatron_add_index(megatron, tmp_path):
    shards = [[[1, 2], [3]], [], [[4, 5, 6], [], [7]]]
    prefixes = [str(tmp_path / f"shard{k}") for k in range(len(shards))]
    for prefix, docs in zip(prefixes, shards):
        build_store(prefix, docs, np.uint16).close()
    merge_stores(tmp_path / "ours", prefixes).close()
    builder = megatron.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for prefix in prefixes:
        builder.add_index(prefix)
    builder.finalize(str(tmp_path / "theirs.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / ("ours" + ext)).read_bytes() == (tmp_path / ("theirs" + ext)).read_bytes()


def test_optimal_dtype_matches_megatron(megatron):
    for vocab_size in (1, 255, 50257, 65499, 65500, 65536, 128256, 256000):
        assert optimal_token_dtype(vocab_size) == megatron.DType.optimal_dtype(vocab_size)


# ------------------------------------------------------------------------------ corruption

# A valid uint16 store: 4 sequences, 10 tokens (.bin 20 bytes); .idx = 34-byte header
# + lengths 34..50 + pointers 50..82 + 5 document indices 82..122.
DOCS = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
LENGTHS, POINTERS, DOC_INDICES = 34, 50, 82


def patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def truncate(path, num_bytes):
    path.write_bytes(path.read_bytes()[:num_bytes])


CORRUPTIONS = {
    "missing idx": ("idx", lambda p: p.unlink(), ["file not found", "web.bin", "web.idx"]),
    "missing bin": ("bin", lambda p: p.unlink(), ["file not found"]),
    "wrong magic": ("idx", lambda p: patch(p, 0, b"NOTANIDX\x00"), ["NOTANIDX", "MMIDIDX"]),
    "version": ("idx", lambda p: patch(p, 9, struct.pack("<Q", 2)), ["version 2", "version 1"]),
    "dtype code 9": ("idx", lambda p: patch(p, 17, b"\x09"), ["dtype code 9", "8=uint16"]),
    "dtype code 0": ("idx", lambda p: patch(p, 17, b"\x00"), ["dtype code 0"]),
    "idx < header": ("idx", lambda p: truncate(p, 20), ["20 bytes", "34-byte header"]),
    "idx truncated": ("idx", lambda p: truncate(p, 114),
                      ["114 bytes", "4 sequences", "5 document indices", "need 122 bytes"]),
    "idx trailing": ("idx", lambda p: p.write_bytes(p.read_bytes() + b"\x00\x00"),
                     ["2 bytes after", "expected 0 or 4"]),
    "negative length": ("idx", lambda p: patch(p, LENGTHS + 4, struct.pack("<i", -2)),
                        ["sequence 1", "negative length -2"]),
    "pointer": ("idx", lambda p: patch(p, POINTERS + 16, struct.pack("<q", 7)),
                ["sequence 2 starts at byte 7", "at byte 10"]),
    "doc not from 0": ("idx", lambda p: patch(p, DOC_INDICES, struct.pack("<q", 1)),
                       ["start with 0, first is 1"]),
    "doc decreasing": ("idx", lambda p: patch(p, DOC_INDICES + 8, struct.pack("<qq", 3, 1)),
                       ["decrease at position 2", "3 then 1"]),
    "doc end": ("idx", lambda p: patch(p, DOC_INDICES + 32, struct.pack("<q", 3)),
                ["end at 3", "4 sequences"]),
    "bin truncated": ("bin", lambda p: truncate(p, 18),
                      ["18 bytes", "describes 20 bytes", "10 tokens of uint16", "truncated"]),
    "bin too long": ("bin", lambda p: p.write_bytes(p.read_bytes() + b"\x00\x00"),
                     ["22 bytes", "describes 20 bytes"]),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_is_reported(tmp_path, case):
    build_store(tmp_path / "web", DOCS, np.uint16).close()
    assert (tmp_path / "web.idx").stat().st_size == 122  # the offsets above hold
    which, damage, fragments = CORRUPTIONS[case]
    damaged = tmp_path / f"web.{which}"
    damage(damaged)
    with pytest.raises(CorruptDataError) as info:
        IndexedTokenStore(tmp_path / "web")
    message = str(info.value)
    assert isinstance(info.value, InputError)
    assert message.startswith(str(damaged)), message
    for fragment in fragments:
        assert fragment in message, message


def test_bin_size_message_uses_thousands_separators(tmp_path):
    build_store(tmp_path / "web_text_document", [np.arange(1024)], np.uint16).close()
    truncate(tmp_path / "web_text_document.bin", 1000)
    with pytest.raises(CorruptDataError, match=r"web_text_document\.bin: 1,000 bytes but the "
                       r"index describes 2,048 bytes \(1,024 tokens of uint16\)"):
        IndexedTokenStore(tmp_path / "web_text_document")


def test_prefix_with_extension_gets_a_hint(tmp_path):
    build_store(tmp_path / "web", [[1]], np.uint16).close()
    with pytest.raises(CorruptDataError, match="without .bin/.idx"):
        IndexedTokenStore(tmp_path / "web.bin")


def test_module_imports_no_training_stack():
    code = ("import json, sys, autoscale_ds.data.indexed\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'megatron', 'deepspeed', 'transformers'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[2])
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
