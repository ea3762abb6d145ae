"""Issue 11: a key given twice in a user's JSON or YAML file is refused, not half-read.

Plain ``json.loads`` and ``yaml.safe_load`` keep the last of two equal keys, silently. Every
call site that reads a user's file now goes through the strict readers of
``autoscale_ds.loaders``; each test below gives one call site a duplicate key and checks a
one-line ``InputError`` naming the file (and the line, where the format has one). The CLI
replays run the command as a user would (see tests/badinput.py).
"""

import json
import logging
from pathlib import Path

import pytest
import yaml

from autoscale_ds.formats.manifest import (DomainEntry, Manifest, SplitEntry, load_manifest,
                                           save_manifest)
from autoscale_ds.data.prepare_dir import OWNED_FILE, OWNED_SCHEMA, OutDir
from autoscale_ds.data.sources import DomainSpec, iter_documents, resolve
from autoscale_ds.data.tokenizer import _configured_eos
from autoscale_ds.errors import InputError
from badinput import refuses


def _one_line_error(call, *args) -> str:
    with pytest.raises(InputError) as err:
        call(*args)
    message = str(err.value)
    assert "\n" not in message, message  # the CLI prints it as one line
    return message


# ----------------------------------------------------------------------------- domains manifest


def _manifest(root: Path, name: str = "web") -> Manifest:
    manifest = Manifest(root, {"kind": "sentencepiece", "path": "tok.model", "eod_id": 1}, 0, 0.1)
    manifest.domains[name] = DomainEntry(SplitEntry(f"{name}/train_text_document", 8, 80),
                                         SplitEntry(f"{name}/valid_text_document", 2, 20),
                                         sources=["2e5", "/data/web"], fingerprint="ab")
    return manifest


def test_manifest_with_a_duplicate_key_names_file_and_both_lines(tmp_path):
    path = save_manifest(_manifest(tmp_path))
    text = path.read_text()
    assert "  train:\n" in text
    # A hand edit repeating 'seed' at the top level, after the domains.
    path.write_text(text + "seed: 5\n")
    first = 1 + text.splitlines().index("seed: 0")
    message = _one_line_error(load_manifest, path)
    last = len(text.splitlines()) + 1
    assert f"domains manifest {path}:{last}:1: duplicate key 'seed' (first given at line {first})" \
        in message, message


def test_manifest_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "manifest.yaml"
    path.write_text("schema: autoscale.domains/v1\ndomains: [web\n")
    assert f"domains manifest {path}:3:1:" in _one_line_error(load_manifest, path)


def test_manifest_number_like_names_read_back_as_written(tmp_path):
    # The strict reader takes 1e3 as a number, so the writer quotes such strings.
    save_manifest(_manifest(tmp_path, name="1e3"))
    assert "'1e3':" in (tmp_path / "manifest.yaml").read_text()
    manifest = load_manifest(tmp_path)
    assert list(manifest.domains) == ["1e3"] and manifest.domains["1e3"].sources == ["2e5", "/data/web"]


def test_manifest_with_an_unquoted_number_like_domain_asks_to_quote_it(tmp_path):
    save_manifest(_manifest(tmp_path, name="1e3"))
    path = tmp_path / "manifest.yaml"
    path.write_text(path.read_text().replace("'1e3':", "1e3:"))  # as an older writer left it
    message = _one_line_error(load_manifest, path)
    assert str(path) in message and "1000.0" in message and "quote it" in message


def test_manifest_reads_an_exponent_as_a_number(tmp_path):
    path = save_manifest(_manifest(tmp_path))
    path.write_text(path.read_text().replace("valid_fraction: 0.1", "valid_fraction: 1e-3"))
    assert load_manifest(path).valid_fraction == 0.001  # YAML 1.1 read the string '1e-3'


def test_manifest_output_is_unchanged_for_ordinary_names(tmp_path):
    manifest = _manifest(tmp_path)
    save_manifest(manifest)
    plain = yaml.safe_dump(manifest.to_dict(), sort_keys=False, default_flow_style=False)
    assert (tmp_path / "manifest.yaml").read_text() == plain.replace("- 2e5\n", "- '2e5'\n")


# ----------------------------------------------------------------------------- prepare's record


def test_prepare_record_with_a_duplicate_key_is_refused(tmp_path):
    record = tmp_path / OWNED_FILE
    record.write_text(f'{{"schema": "{OWNED_SCHEMA}", "paths": ["a/train_text_document.bin"], '
                      f'"paths": ["b/train_text_document.bin"]}}')
    message = _one_line_error(OutDir, tmp_path)
    assert str(record) in message and "duplicate key 'paths'" in message and "delete it" in message


def test_damaged_prepare_record_is_still_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / OWNED_FILE).write_text('{"schema": ')
    with caplog.at_level(logging.WARNING):
        assert OutDir(tmp_path).owned_stores() == []
    assert "ignoring unreadable" in caplog.text


# ----------------------------------------------------------------------------- JSONL records


def _jsonl_domain(tmp_path: Path, lines) -> DomainSpec:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return resolve(DomainSpec("web", [str(path)]))


@pytest.mark.parametrize("record, key", [
    ('{"text": "first", "text": "second"}', "text"),
    ('{"text": "x", "meta": {"lang": "en", "lang": "fr"}}', "lang"),
])
def test_jsonl_record_with_a_duplicate_key_names_file_and_line(tmp_path, record, key):
    domain = _jsonl_domain(tmp_path, ['{"text": "fine"}', record])
    message = _one_line_error(lambda: list(iter_documents(domain)))
    assert f"domain 'web': {tmp_path / 'docs.jsonl'} line 2: duplicate key {key!r}" in message


def test_jsonl_reading_is_otherwise_unchanged(tmp_path):
    # NaN (Python's json.dumps writes it) in a field we do not read is still accepted.
    domain = _jsonl_domain(tmp_path, ['{"text": "a", "score": NaN}', "", '{"text": "b"}'])
    assert list(iter_documents(domain)) == ["a", "b"]
    bom = _jsonl_domain(tmp_path, ['\ufeff{"text": "a"}'])
    with pytest.raises(InputError, match=r"line 1: not valid JSON \(Unexpected UTF-8 BOM"):
        list(iter_documents(bom))
    deep = _jsonl_domain(tmp_path, ["[" * 100_000])
    assert "line 1: nested too deeply" in _one_line_error(lambda: list(iter_documents(deep)))


# ----------------------------------------------------------------------------- tokenizer config


def test_tokenizer_config_with_two_eos_tokens_is_refused(tmp_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text('{"eos_token": "</s>", "model_max_length": 8, "eos_token": "<|endoftext|>"}')
    message = _one_line_error(_configured_eos, tmp_path)
    assert f"Hugging Face tokenizer config {config}: duplicate key 'eos_token'" in message


def test_unreadable_tokenizer_config_still_falls_back_with_a_warning(tmp_path, caplog):
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": ')
    with caplog.at_level(logging.WARNING):
        assert _configured_eos(tmp_path) == []
    assert "ignoring unreadable" in caplog.text
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": {"content": "</s>"}}')
    assert _configured_eos(tmp_path) == ["</s>"]


# ----------------------------------------------------------------------------- CLI replays


def _mixture(tmp_path: Path) -> Path:
    mixture = tmp_path / "mixture.json"
    mixture.write_text(json.dumps({"schema": "autoscale.mixture/v1", "total_tokens": 1000,
                                   "weights": {"web": 0.5, "code": 0.5},
                                   "tokens": {"web": 500, "code": 500}, "method": "ddo",
                                   "provenance": {}}))
    return mixture


@pytest.mark.parametrize("name, text, names", [
    ("paths.yaml", "web: /d/web\ncode: /d/code\nweb: /d/other\n",
     [":3:1:", "duplicate key 'web'", "first given at line 1"]),
    ("paths.json", '{"web": "/d/web", "code": "/d/code", "web": "/d/other"}',
     ["duplicate key 'web'"]),
])
def test_cli_export_refuses_a_paths_map_with_a_duplicate_domain(tmp_path, name, text, names):
    mixture, paths = _mixture(tmp_path), tmp_path / name
    paths.write_text(text)
    refuses(["export", mixture, "--format", "hf", "--data-paths", paths],
            names=[f"data-paths file {paths}", *names], inputs=[mixture, paths])


def test_cli_prepare_refuses_a_jsonl_record_with_a_duplicate_key(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "one document"}\n{"text": "a", "text": "b"}\n')
    refuses(["prepare", "--out-dir", tmp_path / "out", "--no-progress", "--domain",
             f"web={docs}", "--train-tokenizer", "300"],
            names=[f"{docs} line 2", "duplicate key 'text'"], inputs=[docs])
