"""`autoscale prepare` on real text: stores, manifest, determinism, resume, bad input."""

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from autoscale_ds.cli import main
from autoscale_ds.data.indexed import IndexedTokenStore, open_domain_store
from autoscale_ds.formats.manifest import load_manifest
from autoscale_ds.data.prepare import PrepareConfig, prepare
from autoscale_ds.data.sources import DomainSpec, iter_documents, resolve
from autoscale_ds.data.tokenizer import load_tokenizer, spec_for_path
from autoscale_ds.errors import InputError

from conftest import CORPUS_DOMAINS


def _config(out, domains, **kwargs):
    settings = dict(out_dir=str(out), domains=domains, train_vocab_size=500, valid_fraction=0.2,
                    progress=False, tokenizer_sample_chars=50_000)
    settings.update(kwargs)
    return PrepareConfig(**settings)


def _text_domain(directory: Path, name: str, texts):
    directory.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(texts):
        (directory / f"doc{index:03d}.txt").write_text(text)
    return DomainSpec(name, [str(directory)])


def _english(seed: int, count: int):
    words = ("the model reads data from many domains and the mixture decides how fast it "
             "learns while small proxies are noisy and large budgets are costly").split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, 60)) + "." for _ in range(count)]


def test_manifest_and_stores_agree_and_documents_end_with_eod(prepared):
    manifest = load_manifest(prepared.root / "manifest.yaml")
    assert list(manifest.domains) == CORPUS_DOMAINS
    eod = manifest.tokenizer["eod_id"]
    for name, entry in manifest.domains.items():
        for split in ("train", "valid"):
            store = open_domain_store(manifest, name, split)
            counts = getattr(entry, split)
            assert (store.num_documents, store.num_tokens) == (counts.documents, counts.tokens)
            assert counts.documents > 0
            assert all(store[i][-1] == eod for i in range(len(store)))


def test_tokens_decode_back_to_the_source_documents(prepared, raw_corpus):
    tokenizer = load_tokenizer(spec_for_path(str(prepared.root / prepared.tokenizer["path"])))
    spec = next(s for s in raw_corpus if s.name == "reference")
    originals = set(iter_documents(resolve(spec)))
    store = open_domain_store(prepared, "reference", "train")
    decoded = {tokenizer._model.decode(store[i][:-1].tolist()) for i in range(len(store))}
    assert decoded <= originals
    valid = open_domain_store(prepared, "reference", "valid")
    assert len(decoded) + len(valid) == len(originals)  # split by document, nothing lost


def test_same_seed_same_bytes_any_worker_count(tmp_path, raw_corpus):
    domains = raw_corpus[:2]
    first = prepare(_config(tmp_path / "a", domains, workers=1))
    second = prepare(_config(tmp_path / "b", domains, workers=2))
    for name in first.domains:
        for split in ("train", "valid"):
            for suffix in (".bin", ".idx"):
                a = Path(f"{first.prefix(name, split)}{suffix}").read_bytes()
                b = Path(f"{second.prefix(name, split)}{suffix}").read_bytes()
                assert a == b
    assert (tmp_path / "a/tokenizer/tokenizer.model").read_bytes() == \
        (tmp_path / "b/tokenizer/tokenizer.model").read_bytes()


def test_seed_changes_the_held_out_documents(tmp_path, raw_corpus):
    domains = raw_corpus[1:2]  # docstrings: many documents
    a = prepare(_config(tmp_path / "a", domains, seed=0))
    b = prepare(_config(tmp_path / "b", domains, seed=1))
    name = domains[0].name
    assert a.domains[name].valid.tokens != b.domains[name].valid.tokens


def test_rerun_skips_unchanged_domains_and_redoes_changed_ones(tmp_path, caplog):
    web = _text_domain(tmp_path / "web", "web", _english(0, 12))
    news = _text_domain(tmp_path / "news", "news", _english(1, 12))
    config = _config(tmp_path / "out", [web, news], tokenizer=None)
    prepare(config)
    with caplog.at_level(logging.INFO):
        prepare(config)
    assert "domain 'web' is up to date" in caplog.text and "domain 'news' is up to date" in caplog.text
    assert "tokenizer" in caplog.text and "reusing" in caplog.text
    (tmp_path / "web" / "doc000.txt").write_text("entirely new text " * 50)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare(config)
    assert "domain 'web': inputs or settings changed" in caplog.text
    assert "domain 'news' is up to date" not in caplog.text  # tokenizer retrained: all redone


def test_a_crash_keeps_finished_domains_and_leaves_no_partial_store(tmp_path, caplog):
    good = _text_domain(tmp_path / "good", "good", _english(2, 10))
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "ok too"}) +
                        "\n{broken\n")
    bad = DomainSpec("bad", [str(bad_file)])
    out = tmp_path / "out"
    tokenizer = prepare(_config(out, [good])).root / "tokenizer/tokenizer.model"
    with pytest.raises(InputError, match=r"bad.jsonl line 3: not valid JSON"):
        prepare(_config(out, [good, bad], train_vocab_size=None, tokenizer=str(tokenizer)))
    manifest = load_manifest(out)
    assert list(manifest.domains) == ["good"]
    IndexedTokenStore(manifest.prefix("good")).close()
    assert not list((out / "bad").glob("*.bin")) and not list((out / "bad").glob("*.idx"))


def test_jsonl_field_parquet_and_saved_datasets(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = _english(3, 8)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t, "id": i}) + "\n"
                                              for i, t in enumerate(texts)))
    pq.write_table(pa.table({"abstract": texts}), tmp_path / "b.parquet")
    specs = [DomainSpec("jsonl", [str(tmp_path / "a.jsonl")], "body"),
             DomainSpec("parquet", [str(tmp_path / "b.parquet")], "abstract")]
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    specs.append(DomainSpec("saved", [str(tmp_path / "saved")]))
    for spec in specs:
        assert list(iter_documents(resolve(spec))) == texts
    manifest = prepare(_config(tmp_path / "out", specs))
    tokens = {n: e.train.tokens + e.valid.tokens for n, e in manifest.domains.items()}
    assert len(set(tokens.values())) == 1  # same texts, same tokens, whatever the container


def test_local_hugging_face_tokenizer_directory(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    texts = _english(4, 20)
    hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel()
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300,
                                                      special_tokens=["<unk>", "<|endoftext|>"]))
    (tmp_path / "tok").mkdir()
    hf.save(str(tmp_path / "tok" / "tokenizer.json"))
    domain = _text_domain(tmp_path / "d", "d", texts)
    manifest = prepare(_config(tmp_path / "out", [domain], train_vocab_size=None,
                               tokenizer=str(tmp_path / "tok")))
    assert manifest.tokenizer["kind"] == "hf"
    assert manifest.tokenizer["eod_id"] == hf.token_to_id("<|endoftext|>")
    store = open_domain_store(manifest, "d")
    assert hf.decode(store[0][:-1].tolist()).strip() in {t.strip() for t in texts}


def test_binary_files_in_a_directory_are_skipped(tmp_path):
    domain = _text_domain(tmp_path / "mixed", "mixed", _english(5, 3))
    (tmp_path / "mixed" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / "mixed" / ".hidden").write_text("never a document")
    assert len(resolve(domain).files) == 3


@pytest.mark.parametrize("make, message", [
    (lambda d: DomainSpec("x", [str(d / "none*.txt")]), "matches no files"),
    (lambda d: DomainSpec("x", [str(_jsonl(d, [{"body": "a"}, {"body": "b"}]))]),
     "line 1 has no field 'text' (found: ['body'])"),
    (lambda d: DomainSpec("x", [str(_jsonl(d, [{"text": 5}, {"text": "b"}]))]),
     "field 'text' is int, not text"),
    (lambda d: _text_domain(d / "one", "x", ["only one document here"]), "at least 2 are needed"),
    (lambda d: _text_domain(d / "blank", "x", ["", "   "]), "the training split is empty"),
])
def test_bad_inputs_give_clear_errors(tmp_path, make, message):
    good = _text_domain(tmp_path / "good", "good", _english(7, 4))
    with pytest.raises(InputError) as info:
        prepare(_config(tmp_path / "out", [good, make(tmp_path)], train_vocab_size=300))
    assert message in str(info.value)


def test_nothing_to_train_a_tokenizer_on_is_named(tmp_path):
    blank = _text_domain(tmp_path / "blank", "blank", ["", "  \n "])
    with pytest.raises(InputError, match="no text to train the tokenizer"):
        prepare(_config(tmp_path / "out", [blank], train_vocab_size=300))


def _jsonl(directory: Path, records) -> Path:
    path = directory / "x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_settings_problems_are_reported_together():
    with pytest.raises(InputError) as info:
        PrepareConfig(out_dir="o", domains=[], tokenizer="t.model", train_vocab_size=100,
                      valid_fraction=1.5, workers=0)
    text = str(info.value)
    for fragment in ("exactly one of", "vocabulary must be >= 300", "valid fraction", "workers",
                     "no domains"):
        assert fragment in text


def test_cli_prepare_and_its_errors(tmp_path, capsys):
    web = _text_domain(tmp_path / "web", "web", _english(6, 6))
    code = main(["prepare", "--domain", f"web={web.sources[0]}", "--train-tokenizer", "300",
                 "--out-dir", str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "train tokens" in out and "manifest.yaml" in out
    code = main(["prepare", "--domain", "web=/nonexistent/*.txt", "--train-tokenizer", "300",
                 "--out-dir", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert code == 2 and "matches no files" in err and "Traceback" not in err


# ------------------------------------------------------------ Hugging Face datasets


def _dataset_dict(directory: Path, splits: dict):
    datasets = pytest.importorskip("datasets")
    parts = {name: datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})
             for name, texts in splits.items()}
    datasets.DatasetDict(parts).save_to_disk(str(directory))
    return directory


def test_a_dataset_dict_is_read_by_split_not_as_text_files(tmp_path):
    train, valid = _english(10, 9), _english(11, 3)
    saved = _dataset_dict(tmp_path / "dd", {"train": train, "validation": valid})
    assert list(iter_documents(resolve(DomainSpec("d", [str(saved)])))) == train
    chosen = DomainSpec("d", [str(saved)], split="validation")
    assert list(iter_documents(resolve(chosen))) == valid
    manifest = prepare(_config(tmp_path / "out", [DomainSpec("d", [str(saved)],
                                                             valid_split="validation")]))
    entry = manifest.domains["d"]
    assert (entry.train.documents, entry.valid.documents) == (len(train), len(valid))
    assert entry.sources == [str(saved / "train")]


def test_the_only_split_of_a_dataset_dict_is_the_default(tmp_path):
    texts = _english(12, 4)
    saved = _dataset_dict(tmp_path / "dd", {"test": texts})
    assert list(iter_documents(resolve(DomainSpec("d", [str(saved)])))) == texts


@pytest.mark.parametrize("spec_kwargs, message", [
    ({"split": "dev"}, "has no split 'dev' (splits: ['train', 'validation']); choose one with --split"),
    ({"field": "body"}, "has no column 'body' (columns: ['text', 'id']); choose it with --field"),
    ({"field": "id"}, "column 'id' holds Value('int64'), not text"),
    ({"valid_split": "dev"}, "has no split 'dev' (splits: ['train', 'validation']); fix --valid-split"),
    ({"valid_split": "train"}, "cannot be both the training split and the validation split"),
])
def test_dataset_dict_problems_name_splits_and_columns(tmp_path, spec_kwargs, message):
    saved = _dataset_dict(tmp_path / "dd", {"train": ["a b"], "validation": ["c d"]})
    with pytest.raises(InputError) as info:
        resolve(DomainSpec("d", [str(saved)], **spec_kwargs))
    assert message in str(info.value) and str(saved) in str(info.value)


def test_dataset_dict_without_a_train_split_asks_for_one(tmp_path):
    saved = _dataset_dict(tmp_path / "dd", {"a": ["x y"], "b": ["z"]})
    with pytest.raises(InputError, match=r"has no split 'train' \(splits: \['a', 'b'\]\)"):
        resolve(DomainSpec("d", [str(saved)]))


def test_a_saved_dataset_inside_a_text_folder_is_refused(tmp_path):
    _text_domain(tmp_path / "folder", "d", _english(13, 2))
    _dataset_dict(tmp_path / "folder" / "nested", {"train": ["x"], "validation": ["y"]})
    with pytest.raises(InputError, match="holds a datasets.save_to_disk directory"):
        resolve(DomainSpec("d", [str(tmp_path / "folder")]))


def test_a_single_saved_dataset_names_its_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(InputError, match=r"has no column 'text' \(columns: \['body'\]\)"):
        resolve(DomainSpec("d", [str(tmp_path / "saved")]))


# ------------------------------------------------------------------------- encodings


def _latin1_domain(directory: Path, **kwargs) -> DomainSpec:
    spec = _text_domain(directory, "old", _english(14, 4))
    (directory / "doc900.txt").write_bytes("café crème, déjà vu ".encode("latin-1") * 20)
    (directory / "doc901.txt").write_bytes("naïve façade ".encode("latin-1") * 20)
    for key, value in kwargs.items():
        setattr(spec, key, value)
    return spec


def test_undecodable_text_stops_with_the_first_file_and_the_count(tmp_path):
    spec = _latin1_domain(tmp_path / "old")
    with pytest.raises(InputError) as info:
        list(iter_documents(resolve(spec)))
    message = str(info.value)
    assert "doc900.txt is not utf-8 text (byte 0xe9" in message
    assert "2 of 6 file(s)" in message and "--encoding" in message and "--on-decode-error" in message


def test_the_encoding_can_be_named(tmp_path):
    documents = list(iter_documents(resolve(_latin1_domain(tmp_path / "old", encoding="latin-1"))))
    assert documents[-2].startswith("café crème") and "\ufffd" not in "".join(documents)


@pytest.mark.parametrize("policy", ["skip", "replace"])
def test_skipped_or_replaced_documents_are_counted_in_the_manifest(tmp_path, policy, caplog):
    spec = _latin1_domain(tmp_path / "old", on_decode_error=policy)
    with caplog.at_level(logging.WARNING):
        manifest = prepare(_config(tmp_path / "out", [spec], valid_fraction=0.3))
    report = load_manifest(tmp_path / "out").domains["old"].undecodable
    assert report == {"documents": 2, "encoding": "utf-8", "on_decode_error": policy,
                      "first": str(tmp_path / "old" / "doc900.txt")}
    assert manifest.domains["old"].undecodable == report
    assert "2 document(s) are not valid utf-8 text" in caplog.text
    entry = manifest.domains["old"]
    assert entry.train.documents + entry.valid.documents == (4 if policy == "skip" else 6)


def test_clean_text_leaves_no_decode_report_in_the_manifest(tmp_path):
    spec = _text_domain(tmp_path / "ok", "ok", _english(15, 4))
    prepare(_config(tmp_path / "out", [spec]))
    assert "undecodable" not in (tmp_path / "out" / "manifest.yaml").read_text()


def test_a_binary_file_named_directly_is_not_text_in_any_encoding(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    spec = DomainSpec("b", [str(tmp_path / "image.png")], encoding="latin-1")
    with pytest.raises(InputError, match=r"image.png is not latin-1 text \(it holds NUL"):
        list(iter_documents(resolve(spec)))


def test_a_bad_byte_in_jsonl_names_its_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"x.jsonl line 2 is not utf-8 text .*1 of 1 file"):
        list(iter_documents(resolve(DomainSpec("j", [str(path)]))))
    skipped = resolve(DomainSpec("j", [str(path)], on_decode_error="skip"))
    assert list(iter_documents(skipped)) == ["fine", ""]  # positions kept for the split


@pytest.mark.parametrize("kwargs, message", [
    ({"encoding": "klingon"}, "unknown encoding 'klingon'"),
    ({"on_decode_error": "ignore"}, "--on-decode-error must be one of ['error', 'skip', 'replace']"),
])
def test_decoding_settings_are_checked(tmp_path, kwargs, message):
    spec = _text_domain(tmp_path / "d", "d", ["a", "b"])
    with pytest.raises(InputError, match=re.escape(message)):
        resolve(DomainSpec("d", spec.sources, **kwargs))


# ------------------------------------------------------------ the output directory


def _tokenizer_file(tmp_path: Path) -> str:
    """A SentencePiece model trained once, so reruns share one tokenizer."""
    seed = _text_domain(tmp_path / "seedtext", "s", _english(20, 12))
    return str(prepare(_config(tmp_path / "tok", [seed])).root / "tokenizer/tokenizer.model")


def _fixed(out, domains, tokenizer, **kwargs):
    return _config(out, domains, train_vocab_size=None, tokenizer=tokenizer, **kwargs)


def test_a_foreign_manifest_is_refused_unless_overwrite(tmp_path):
    spec = _text_domain(tmp_path / "web", "web", _english(21, 6))
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.yaml").write_text("name: somebody else's file\n")
    with pytest.raises(InputError, match=r"manifest.yaml, which is not a manifest written by "
                                         r"autoscale prepare.*--overwrite"):
        prepare(_config(out, [spec]))
    assert (out / "manifest.yaml").read_text() == "name: somebody else's file\n"
    assert list(prepare(_config(out, [spec], overwrite=True)).domains) == ["web"]


def test_a_foreign_store_is_refused_but_our_unlisted_one_is_not(tmp_path):
    spec = _text_domain(tmp_path / "web", "web", _english(22, 6))
    out = tmp_path / "out"
    (out / "web").mkdir(parents=True)
    (out / "web" / "train_text_document.bin").write_bytes(b"precious")
    with pytest.raises(InputError, match=r"web/train_text_document.bin, not written by autoscale"):
        prepare(_config(out, [spec]))
    assert (out / "web" / "train_text_document.bin").read_bytes() == b"precious"
    prepare(_config(out, [spec], overwrite=True))
    # A run killed after writing its stores but before listing them: they are still ours.
    (out / "manifest.yaml").unlink()
    (spec_file := tmp_path / "web" / "doc000.txt").write_text(spec_file.read_text() + " more")
    prepare(_config(out, [spec]))


def test_domains_not_named_again_are_kept_or_dropped_explicitly(tmp_path):
    tokenizer = _tokenizer_file(tmp_path)
    web = _text_domain(tmp_path / "web", "web", _english(23, 6))
    news = _text_domain(tmp_path / "news", "news", _english(24, 6))
    out = tmp_path / "out"
    prepare(_fixed(out, [web, news], tokenizer))
    assert list(prepare(_fixed(out, [web], tokenizer)).domains) == ["news", "web"]
    open_domain_store(load_manifest(out), "news").close()
    with pytest.raises(InputError, match=r"also holds domain\(s\) \['news'\].*seed 0"):
        prepare(_fixed(out, [web], tokenizer, seed=1))
    assert list(prepare(_fixed(out, [web], tokenizer, drop_other_domains=True)).domains) == ["web"]
    assert not (out / "news").exists()
    assert list(load_manifest(out).domains) == ["web"]


def test_a_retrained_tokenizer_does_not_keep_old_domains(tmp_path):
    web = _text_domain(tmp_path / "web", "web", _english(25, 6))
    news = _text_domain(tmp_path / "news", "news", _english(26, 6))
    out = tmp_path / "out"
    prepare(_config(out, [web, news]))
    model = (out / "tokenizer/tokenizer.model").read_bytes()
    with pytest.raises(InputError, match=r"\['news'\].*the tokenizer that this run trains anew"):
        prepare(_config(out, [web]))
    assert (out / "tokenizer/tokenizer.model").read_bytes() == model  # nothing replaced yet


def test_temp_files_of_killed_runs_are_removed_and_nothing_else(tmp_path):
    spec = _text_domain(tmp_path / "web", "web", _english(27, 6))
    out = tmp_path / "out"
    prepare(_config(out, [spec]))
    stale = [out / "web" / ".train_text_document.bin.0a1b2c3d.tmp",
             out / "web" / ".valid_text_document.idx.deadbeef.tmp",
             out / ".manifest.yaml.k2_x9zq1.tmp", out / "gone" / ".train_text_document.bin.00ff00ff.tmp"]
    kept = [out / "web" / "notes.tmp", out / "web" / ".train_text_document.bin.tmp",
            out / ".other.yaml.abcdefgh.tmp"]
    for path in stale + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 100)
    prepare(_config(out, [spec]))
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_an_empty_validation_split_says_which_split_and_what_to_change(tmp_path):
    from autoscale_ds.data.prepare import _valid_mask

    texts = _english(28, 2)
    held_out = int(np.flatnonzero(_valid_mask("d", 2, 0.2, 0))[0])
    texts[held_out] = "   "
    spec = _text_domain(tmp_path / "d", "d", texts)
    with pytest.raises(InputError) as info:
        prepare(_config(tmp_path / "out", [spec]))
    message = str(info.value)
    assert "the validation split is empty" in message and "training tokens in 1 documents" in message
    assert "raise --valid-fraction (now 0.2)" in message and "has 0 tokens" not in message
