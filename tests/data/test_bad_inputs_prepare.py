"""Issue 11 replays for ``autoscale prepare``: saved datasets, output paths, encodings,
overwrites and races, killed runs, an empty validation split.

Each refusal runs the command as a user would (a subprocess) and checks it failed cleanly:
exit 2, one ``autoscale: error:`` line naming what to fix, no traceback, inputs unchanged
(see tests/badinput.py). The race and the kill are real: two processes, a real SIGKILL.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from badinput import REPO, assert_clean_failure, refuses, run_command

_WORDS = ("the model reads data from many domains and the mixture decides how fast it learns "
          "while small proxies are noisy and large budgets are costly").split()


def _texts(directory: Path, count: int, seed: int, words_per_doc: int = 60) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        (directory / f"doc{index:04d}.txt").write_text(" ".join(rng.choice(_WORDS, words_per_doc)))
    return directory


def _argv(out: Path, *domains: str, tokenizer=None):
    chosen = ["--tokenizer", str(tokenizer)] if tokenizer else ["--train-tokenizer", "300"]
    argv = ["prepare", "--out-dir", str(out), "--no-progress", "--tokenizer-sample-chars", "20000"]
    for domain in domains:
        argv += ["--domain", domain]
    return argv + chosen


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """One trained SentencePiece model that the runs below share."""
    d = tmp_path_factory.mktemp("prepare_tokenizer")
    result = run_command(_argv(d / "out", f"seed={_texts(d / 'seed', 12, 0)}"))
    assert result.returncode == 0, result.stderr
    return d / "out" / "tokenizer" / "tokenizer.model"


def _dataset_dict(directory: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    split = {name: datasets.Dataset.from_dict({"text": [f"{name} text {i}" for i in range(4)],
                                               "id": list(range(4))})
             for name in ("train", "validation")}
    datasets.DatasetDict(split).save_to_disk(str(directory))
    return directory


# --------------------------------------------------- item 3: datasets.save_to_disk


@pytest.mark.parametrize("flags, names", [
    (["--split", "dev"], ["'dev'", "['train', 'validation']", "--split"]),
    (["--field", "body"], ["'body'", "['text', 'id']", "--field"]),
    (["--valid-split", "test"], ["'test'", "['train', 'validation']", "--valid-split"]),
])
def test_a_dataset_dict_names_its_splits_and_columns(tmp_path, flags, names):
    saved = _dataset_dict(tmp_path / "dd")
    refuses(_argv(tmp_path / "out", f"hf={saved}") + flags, names=[str(saved)] + names,
            inputs=[saved])


def test_a_dataset_dict_is_not_read_as_text_files(tmp_path, tokenizer):
    saved = _dataset_dict(tmp_path / "dd")
    result = run_command(_argv(tmp_path / "out", f"hf={saved}", tokenizer=tokenizer)
                         + ["--valid-split", "hf=validation"])
    assert result.returncode == 0, result.stderr
    domain = yaml.safe_load((tmp_path / "out" / "manifest.yaml").read_text())["domains"]["hf"]
    assert (domain["train"]["documents"], domain["valid"]["documents"]) == (4, 4)
    assert domain["sources"] == [str(saved / "train")]


# ------------------------------------------------------ item 4: OS errors on paths


def _without_root_override(argv):
    """Run as a user whom file permissions bind: as root, drop the capabilities that
    bypass them (a container's root would read and write anything)."""
    command = [sys.executable, "-m", "autoscale_ds"] + [str(a) for a in argv]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot bind")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"] + command
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_out_dir_that_is_a_file(tmp_path):
    web = _texts(tmp_path / "web", 4, 1)
    (tmp_path / "file").write_text("not a directory\n")
    refuses(_argv(tmp_path / "file", f"web={web}"), names=[str(tmp_path / "file"), "--out-dir"],
            inputs=[web, tmp_path / "file"])


def test_out_dir_inside_a_file(tmp_path):
    web = _texts(tmp_path / "web", 4, 1)
    (tmp_path / "file").write_text("not a directory\n")
    refuses(_argv(tmp_path / "file" / "sub", f"web={web}"), names=[str(tmp_path / "file")],
            inputs=[web, tmp_path / "file"])


def test_read_only_out_dir(tmp_path):
    web = _texts(tmp_path / "web", 4, 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o555)
    try:
        result = _without_root_override(_argv(tmp_path / "out", f"web={web}"))
    finally:
        (tmp_path / "out").chmod(0o755)
    assert_clean_failure(result, names=[str(tmp_path / "out"), "Permission denied"])


def test_unreadable_input_file(tmp_path):
    web = _texts(tmp_path / "web", 4, 1)
    secret = web / "doc0002.txt"
    secret.chmod(0o000)
    try:
        result = _without_root_override(_argv(tmp_path / "out", f"web={web}"))
    finally:
        secret.chmod(0o644)
    assert_clean_failure(result, names=["'web'", str(secret), "Permission denied"])


# --------------------------------------------------------- item 10: encodings


def test_latin1_text_is_not_silently_changed(tmp_path, tokenizer):
    web = _texts(tmp_path / "web", 4, 2)
    (web / "doc0001.txt").write_bytes("café au lait ".encode("latin-1") * 30)
    (web / "doc0003.txt").write_bytes("déjà vu ".encode("latin-1") * 30)
    refuses(_argv(tmp_path / "out", f"web={web}", tokenizer=tokenizer),
            names=["'web'", str(web / "doc0001.txt"), "2 of 4 file(s)", "--encoding",
                   "--on-decode-error"], inputs=[web])


@pytest.mark.parametrize("encoding", [[], ["--encoding", "latin-1"]])
def test_a_binary_file_named_directly(tmp_path, tokenizer, encoding):
    web = _texts(tmp_path / "web", 3, 2)
    image = tmp_path / "photo.jpg"
    image.write_bytes(bytes(range(256)) * 8)
    refuses(_argv(tmp_path / "out", f"web={web},{image}", tokenizer=tokenizer) + encoding,
            names=[str(image), "'web'"], inputs=[web, image])


def test_skipped_documents_are_counted_in_log_and_manifest(tmp_path, tokenizer):
    web = _texts(tmp_path / "web", 6, 2)
    (web / "doc0001.txt").write_bytes("café au lait ".encode("latin-1") * 30)
    result = run_command(_argv(tmp_path / "out", f"web={web}", tokenizer=tokenizer)
                         + ["--on-decode-error", "skip"])
    assert result.returncode == 0, result.stderr
    assert "1 document(s) are not valid utf-8 text and were skipped" in result.stderr
    report = yaml.safe_load((tmp_path / "out" / "manifest.yaml").read_text())
    assert report["domains"]["web"]["undecodable"]["documents"] == 1


# ----------------------------------------------- item 11: overwrites and races


def test_a_foreign_manifest_is_not_overwritten(tmp_path):
    web = _texts(tmp_path / "web", 4, 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.yaml").write_text("experiment: 42\nnotes: somebody else's file\n")
    refuses(_argv(out, f"web={web}"), names=[str(out / "manifest.yaml"), "--overwrite"],
            inputs=[web, out])


def test_a_foreign_store_is_not_overwritten(tmp_path):
    web = _texts(tmp_path / "web", 4, 3)
    out = tmp_path / "out"
    (out / "web").mkdir(parents=True)
    (out / "web" / "valid_text_document.bin").write_bytes(b"\0" * 4096)
    refuses(_argv(out, f"web={web}"), names=[str(out / "web" / "valid_text_document.bin"),
                                             "--overwrite"], inputs=[web, out])


def test_fewer_domains_with_a_new_tokenizer_do_not_drop_the_others(tmp_path):
    web, news = _texts(tmp_path / "web", 4, 4), _texts(tmp_path / "news", 4, 5)
    out = tmp_path / "out"
    assert run_command(_argv(out, f"web={web}", f"news={news}")).returncode == 0
    refuses(_argv(out, f"web={web}"), names=["['news']", "--drop-other-domains"],
            inputs=[web, news, out / "manifest.yaml", out / "news", out / "tokenizer"])


def test_two_runs_on_one_directory_do_not_race(tmp_path, tokenizer):
    # The first run's domain takes a while to tokenise, so it is caught holding the lock.
    web, news = _texts(tmp_path / "web", 40, 6, words_per_doc=6000), _texts(tmp_path / "news", 4, 7)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "autoscale_ds"] + _argv(out, f"web={web}", tokenizer=tokenizer)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Written only under the lock, as the first domain starts: stop the run right there.
        _wait_for(lambda: (out / ".autoscale-prepare.json").exists() or first.poll() is not None)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before it could be paused"
        second = run_command(_argv(out, f"news={news}", tokenizer=tokenizer))
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert_clean_failure(second, names=[str(out)])
    assert list(yaml.safe_load((out / "manifest.yaml").read_text())["domains"]) == ["web"]
    # Run after the first one, the second one adds its domain and keeps the first's.
    assert run_command(_argv(out, f"news={news}", tokenizer=tokenizer)).returncode == 0
    assert sorted(yaml.safe_load((out / "manifest.yaml").read_text())["domains"]) == ["news", "web"]


def _wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


# --------------------------------------------------- item 14: killed runs' temps


def test_a_killed_run_leaves_no_temp_files_after_the_next_run(tmp_path, tokenizer):
    big = _texts(tmp_path / "big", 40, 8, words_per_doc=6000)  # a run long enough to kill
    argv = _argv(tmp_path / "out", f"big={big}", tokenizer=tokenizer)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    run = subprocess.Popen([sys.executable, "-m", "autoscale_ds"] + argv, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temps = lambda: list((tmp_path / "out").rglob(".*.tmp"))  # noqa: E731
    store_temps = lambda: list((tmp_path / "out").rglob(".*_text_document.bin.*.tmp"))  # noqa: E731
    _wait_for(lambda: store_temps() or run.poll() is not None)
    run.kill()
    assert run.wait() == -signal.SIGKILL
    assert store_temps(), "the run ended before it could be killed mid-write"
    result = run_command(argv)
    assert result.returncode == 0, result.stderr
    assert not temps() and "left in" in result.stderr
    clean = run_command(_argv(tmp_path / "clean", f"big={big}", tokenizer=tokenizer))
    assert clean.returncode == 0, clean.stderr
    for split in ("train", "valid"):
        for suffix in (".bin", ".idx"):
            name = f"big/{split}_text_document{suffix}"
            assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


# --------------------------------------------------- item 15: empty validation


def test_an_empty_validation_split_names_the_split(tmp_path):
    from autoscale_ds.data.prepare import _valid_mask

    web = _texts(tmp_path / "web", 2, 9)
    held_out = int(np.flatnonzero(_valid_mask("web", 2, 0.05, 0))[0])
    (web / f"doc{held_out:04d}.txt").write_text("\n\n   \n")
    refuses(_argv(tmp_path / "out", f"web={web}"),
            names=["'web'", "validation split is empty", "--valid-fraction"], inputs=[web])
