"""`autoscale prepare` on real text: stores, manifest, determinism, resume, bad input."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from autoscale_ds.cli import main
from autoscale_ds.data.indexed import IndexedTokenStore
from autoscale_ds.data.manifest import load_manifest
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
            store = manifest.open_store(name, split)
            counts = getattr(entry, split)
            assert (store.num_documents, store.num_tokens) == (counts.documents, counts.tokens)
            assert counts.documents > 0
            assert all(store[i][-1] == eod for i in range(len(store)))


def test_tokens_decode_back_to_the_source_documents(prepared, raw_corpus):
    tokenizer = load_tokenizer(spec_for_path(str(prepared.root / prepared.tokenizer["path"])))
    spec = next(s for s in raw_corpus if s.name == "reference")
    originals = set(iter_documents(resolve(spec)))
    store = prepared.open_store("reference", "train")
    decoded = {tokenizer._model.decode(store[i][:-1].tolist()) for i in range(len(store))}
    assert decoded <= originals
    valid = prepared.open_store("reference", "valid")
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
    store = manifest.open_store("d")
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
    (lambda d: _text_domain(d / "blank", "x", ["", "   "]), "no non-empty train documents"),
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
