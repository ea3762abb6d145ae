"""Bad inputs to `launchers/train.py`, replayed as a user would: each fails with exit 2 and
one `train: error:` line naming the file and the field, no traceback, inputs unchanged."""

import shutil
from pathlib import Path

import pytest
import yaml

from badinput import REPO, refuses

pytest.importorskip("deepspeed")
pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

TRAIN = str(REPO / "launchers" / "train.py")
SEQ_LEN = 32


def _write_config(tmp_path, prepared, **overrides) -> Path:
    config = {"manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(tmp_path / "out"),
              "seq_len": SEQ_LEN, "micro_batch_size": 4, "global_batch_size": 8,
              "tokens_per_domain": {"code": 8 * SEQ_LEN, "docstrings": 8 * SEQ_LEN},
              "eval_samples_per_domain": 2, "progress": False}
    config.update(overrides)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# Each value as YAML writes it, and what the one error line must name.
WRONG_TYPES = {
    "tokens_per_domain_text": ("tokens_per_domain: abc", ["tokens_per_domain", "'abc'"]),
    "manifest_number": ("manifest: 123", ["manifest", "123"]),
    "seed_text": ("seed: abc", ["seed", "'abc'"]),
    "run_id_list": ("run_id: [a, b]", ["run_id", "['a', 'b']"]),
    "ds_config_missing": ("ds_config: /nonexistent/zero9.json", ["ds_config", "/nonexistent/zero9.json",
                                                                  "file not found"]),
    "eval_interval_float": ("eval_interval_steps: 2.5", ["eval_interval_steps", "2.5"]),
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_wrong_typed_setting_is_named_with_the_file(tmp_path, prepared, case):
    line, names = WRONG_TYPES[case]
    config = _write_config(tmp_path, prepared)
    settings = yaml.safe_load(config.read_text())
    settings.pop(line.split(":")[0], None)  # the line below gives it, as the user wrote it
    config.write_text(yaml.safe_dump(settings) + line + "\n")
    # The file and the field: nothing is built (no output directory appears).
    refuses([TRAIN, "--config", config], names=[str(config), *names], prog="train",
            inputs=[config, prepared.root])
    assert not (tmp_path / "out").exists()


def test_every_wrong_setting_is_reported_at_once(tmp_path, prepared):
    config = _write_config(tmp_path, prepared, seed="abc", run_id=["a", "b"], manifest=123)
    refuses([TRAIN, "--config", config], names=[str(config), "seed", "run_id", "manifest"],
            prog="train", inputs=[config])


def test_deepspeed_config_flag_with_a_missing_file(tmp_path, prepared):
    config = _write_config(tmp_path, prepared)
    refuses([TRAIN, "--config", config, "--deepspeed", "--deepspeed_config", tmp_path / "nope.json"],
            names=[str(config), "ds_config", str(tmp_path / "nope.json")], prog="train",
            inputs=[config])


def test_set_with_unparsable_yaml(tmp_path, prepared):
    config = _write_config(tmp_path, prepared)
    refuses([TRAIN, "--config", config, "--set", "seed=[1"], names=["--set", "seed=[1"],
            prog="train", inputs=[config])


def test_missing_config_flag_is_one_train_error_line(tmp_path):
    refuses([TRAIN], names=["--config"], prog="train")


def _copy_with_foreign_tokens(prepared, tmp_path) -> Path:
    """The prepared data, with one domain's train tokens all 0xFF bytes (id 65,535 in its
    uint16 store): what a store made with a larger tokenizer looks like to this model."""
    root = tmp_path / "prepared"
    shutil.copytree(prepared.root, root)
    store = root / prepared.domains["docstrings"].train.prefix
    bin_path = store.with_name(store.name + ".bin")
    bin_path.write_bytes(b"\xff" * bin_path.stat().st_size)
    return bin_path


def test_token_ids_beyond_the_vocabulary_are_refused_when_the_store_opens(tmp_path, prepared):
    bin_path = _copy_with_foreign_tokens(prepared, tmp_path)
    config = _write_config(tmp_path, prepared, manifest=str(tmp_path / "prepared" / "manifest.yaml"))
    vocab_size = int(prepared.tokenizer["vocab_size"])
    line = refuses([TRAIN, "--config", config], prog="train", inputs=[config, tmp_path / "prepared"],
                   names=[str(bin_path), "65,535", f"vocab_size {vocab_size:,}",
                          "tokenizer.vocab_size", "autoscale prepare"])
    assert "docstrings" in line
    assert not (tmp_path / "out").exists()  # refused before any model was built
