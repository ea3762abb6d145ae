"""DoReMi in the real DeepSpeed loop on CPU: a tiny GPT-2 reference on a base mixture, then a
proxy that re-weights its stream by online Group DRO. Two synthetic domains make the expected
answer known: ``noise`` (uniformly random tokens, which no model can learn, so the proxy's
excess loss over the reference is ~0) and ``pattern`` (a fixed cycle, learnable): DoReMi must
move the weight to ``pattern``. Also: kill + resume gives byte-identical weights, and a
missing or mismatched reference is a clear error."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("deepspeed")
pytest.importorskip("transformers")

from autoscale_ds.data.indexed import build_store  # noqa: E402
from autoscale_ds.errors import InputError  # noqa: E402
from autoscale_ds.formats.manifest import DomainEntry, Manifest, SplitEntry, save_manifest  # noqa: E402
from autoscale_ds.method.doremi import read_trajectory  # noqa: E402
from test_train import _env, kill_train_when  # noqa: E402  (the training subprocess helpers)

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "launchers" / "train.py")
SEQ_LEN, VOCAB = 32, 64
STEPS = 24  # of 8 sequences: the reference's and the proxy's length
BUDGET = {"pattern": STEPS * 4 * SEQ_LEN, "noise": STEPS * 4 * SEQ_LEN}  # base mixture 50:50


def _documents(kind: str, count: int, rng) -> list:
    if kind == "noise":  # every token uniform over the vocabulary (id 0 is the end of document)
        return [rng.integers(1, VOCAB, size=200) for _ in range(count)]
    cycle = rng.permutation(np.arange(1, VOCAB))[:16]  # one fixed 16-token cycle, any offset
    return [np.roll(np.tile(cycle, 13), -int(rng.integers(16)))[:200] for _ in range(count)]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Two domains of token ids written straight into indexed stores (no tokenizer needed)."""
    root = tmp_path_factory.mktemp("doremi_data")
    rng = np.random.default_rng(0)
    manifest = Manifest(root, {"kind": "synthetic", "vocab_size": VOCAB, "eod_id": 0}, 0, 0.1)
    for domain in ("pattern", "noise"):
        splits = {}
        for split, count in (("train", 60), ("valid", 8)):
            docs = [np.append(d, 0) for d in _documents(domain, count, rng)]
            build_store(root / domain / split, docs, np.uint16)
            splits[split] = SplitEntry(f"{domain}/{split}", count, sum(len(d) for d in docs))
        manifest.domains[domain] = DomainEntry(splits["train"], splits["valid"])
    return save_manifest(manifest)


def _config(directory: Path, manifest: Path, name: str, **overrides) -> Path:
    config = {"manifest": str(manifest), "output_dir": str(directory / name), "run_id": name,
              "seq_len": SEQ_LEN, "micro_batch_size": 4, "global_batch_size": 8,
              "tokens_per_domain": BUDGET, "learning_rate": 3e-3, "warmup_steps": 2,
              "eval_samples_per_domain": 2, "progress": False, "monitor": []}
    config.update(overrides)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _proxy(directory: Path, manifest: Path, reference_dir: Path, name="proxy", **overrides) -> Path:
    doremi = {"reference_checkpoint_dir": str(reference_dir / "checkpoints")}
    return _config(directory, manifest, name, doremi=doremi, checkpoint_interval_steps=4, **overrides)


def _train(config: Path):
    result = subprocess.run([sys.executable, TRAIN, "--config", str(config)], env=_env(),
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _row(config: Path) -> dict:
    output_dir = Path(yaml.safe_load(config.read_text())["output_dir"])
    return json.loads((output_dir / "result.json").read_text())["runs"][0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, manifest):
    """The reference on the base mixture, then an uninterrupted DoReMi proxy against it."""
    root = tmp_path_factory.mktemp("doremi_runs")
    reference = _config(root, manifest, "reference")
    _train(reference)
    proxy = _proxy(root, manifest, root / "reference")
    started = time.time()
    _train(proxy)
    return {"root": root, "reference": reference, "proxy": proxy, "seconds": time.time() - started}


@pytest.mark.slow
def test_doremi_moves_the_weight_to_the_learnable_domain(runs):
    row = _row(runs["proxy"])
    assert row["status"] == "ok" and row["steps"] == STEPS
    doremi = row["doremi"]
    assert doremi["steps"] == STEPS and doremi["step_size"] == 1.0 and doremi["smoothing"] == 0.001
    average = doremi["average_weights"]
    assert sum(average.values()) == pytest.approx(1.0)
    assert average["pattern"] > 0.8, average  # from 0.5: noise has no excess loss to chase
    # the stream followed the weights: far more pattern tokens than the 50:50 budget
    assert row["train_tokens"]["pattern"] > 3 * row["train_tokens"]["noise"]
    assert sum(row["train_tokens"].values()) == sum(BUDGET.values())
    steps, weights = read_trajectory(runs["root"] / "proxy" / "doremi_weights.jsonl")
    assert steps == list(range(1, STEPS + 1))
    assert np.mean(weights["pattern"]) == pytest.approx(average["pattern"], rel=1e-12)
    assert weights["pattern"][-1] == doremi["final_weights"]["pattern"]
    assert min(min(w) for w in weights.values()) >= 0.001 / 2  # the smoothing floor c/k


@pytest.mark.slow
def test_trajectory_plot(runs, tmp_path):
    from autoscale_ds.method.plots import plot_doremi_trajectory

    path = plot_doremi_trajectory(runs["root"] / "proxy" / "doremi_weights.jsonl", tmp_path / "w.png")
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_killed_doremi_run_resumes_to_byte_identical_weights(runs, tmp_path, manifest):
    proxy = _proxy(tmp_path, manifest, runs["root"] / "reference")
    kill_train_when(proxy, tmp_path / "proxy" / "checkpoints" / "step_00000008")
    assert not (tmp_path / "proxy" / "result.json").exists()
    with open(tmp_path / "proxy" / "doremi_weights.jsonl", "a") as torn:  # a line cut short
        torn.write('{"step": 99, "weigh')
    result = _train(proxy)
    assert "resumed from step" in result.stderr
    trajectory = "doremi_weights.jsonl"
    assert (tmp_path / "proxy" / trajectory).read_bytes() == \
        (runs["root"] / "proxy" / trajectory).read_bytes()
    resumed, uninterrupted = _row(proxy), _row(runs["proxy"])
    assert json.dumps(resumed["doremi"]["average_weights"]) == \
        json.dumps(uninterrupted["doremi"]["average_weights"])
    for key in ("steps", "train_tokens", "step_losses", "eval_loss"):
        assert resumed[key] == uninterrupted[key], key


_EACH_RANK = """
import json, os, sys
from autoscale_ds.train.config import load_train_config
from autoscale_ds.train.trainer import Trainer
trainer = Trainer(load_train_config(sys.argv[1]))
trainer.run()
with open(sys.argv[2] + os.environ["RANK"], "w") as out:
    json.dump(trainer.doremi.state_dict(), out)
"""


@pytest.mark.slow
def test_two_ranks_hold_the_same_weights(runs, tmp_path, manifest):
    """Each rank sees half of every step: only the reduced excess losses give every rank the
    whole step's, hence one set of weights (else their streams would drift apart)."""
    script = tmp_path / "each_rank.py"
    script.write_text(_EACH_RANK)
    proxy = _proxy(tmp_path, manifest, runs["root"] / "reference")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(script), str(proxy), str(tmp_path / "state")],
                            env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    states = [json.loads((tmp_path / f"state{r}").read_text()) for r in (0, 1)]
    assert states[0] == states[1] and states[0]["weights"]["steps"] == STEPS
    # the same run as one process, up to the order of float sums in the gradients
    alone = _row(runs["proxy"])["doremi"]["average_weights"]
    assert _row(proxy)["doremi"]["average_weights"] == pytest.approx(alone, rel=1e-3)


def test_stream_gives_a_small_weight_its_share_and_replays_exactly():
    """A fresh 8-sample blend per step would never draw a 5% domain; the stream carries what each
    domain is owed, so over 100 steps it gets its ~40 samples, none repeated or skipped."""
    from autoscale_ds.train.doremi import DoReMiStream
    from autoscale_ds.train.plan import BatchTriple, plan_samples

    plan = plan_samples({"a": 400 * SEQ_LEN, "b": 400 * SEQ_LEN}, SEQ_LEN, 8)
    stream = DoReMiStream([None, None], plan, BatchTriple(4, 2, 1), 0)
    weights = [[0.95, 0.05]] * 99
    for w in weights:
        stream.plan_next_step(w)
    drawn = np.bincount(stream.domain_index, minlength=2)
    assert abs(drawn[1] - (8 * 0.5 + 8 * 0.05 * 99)) <= 1  # step 0 at the plan's 50:50
    for domain in (0, 1):
        assert sorted(stream.domain_sample_index[stream.domain_index == domain]) == list(range(drawn[domain]))
    again = DoReMiStream([None, None], plan, BatchTriple(4, 2, 1), 0)
    again.replay(weights)
    assert again.domain_index.tobytes() == stream.domain_index.tobytes()
    assert again.domain_sample_index.tobytes() == stream.domain_sample_index.tobytes()
    with pytest.raises(RuntimeError, match="not planned yet"):
        DoReMiStream([None, None], plan, BatchTriple(4, 2, 1), 0).micro_batch(1, 0)


# ----------------------------------------------------------------------------- bad input

def _trainer(config: Path, monkeypatch):
    from autoscale_ds.train.config import load_train_config
    from autoscale_ds.train.trainer import Trainer

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    return Trainer(load_train_config(config))


def test_missing_reference_checkpoint_is_a_clear_error(tmp_path, manifest, monkeypatch):
    missing = tmp_path / "never_trained"
    proxy = _proxy(tmp_path, manifest, missing)
    with pytest.raises(InputError) as info:
        _trainer(proxy, monkeypatch)
    assert str(missing / "checkpoints") in str(info.value)
    assert "train the reference run first" in str(info.value)


@pytest.mark.slow
def test_reference_of_another_model_size_is_a_clear_error(runs, tmp_path, manifest, monkeypatch):
    from autoscale_ds.train.doremi import load_reference_model

    trainer = _trainer(_proxy(tmp_path, manifest, runs["root"] / "reference", model_size="mini"),
                       monkeypatch)
    with pytest.raises(InputError) as info:
        load_reference_model(trainer.doremi.tag_dir, "gpt2", "mini", VOCAB, SEQ_LEN, "cpu")
    message = str(info.value)
    assert str(runs["root"] / "reference" / "checkpoints") in message
    assert "gpt2-mini" in message and "same model_family, model_size" in message


def test_doremi_settings_are_validated_and_defaulted():
    from autoscale_ds.train.config import TrainConfig

    base = {"manifest": "m", "output_dir": "o", "tokens_per_domain": {"a": 100}}
    with pytest.raises(InputError) as info:
        TrainConfig(**base, doremi={"reference_checkpoint_dir": "", "step_size": 0,
                                    "smoothing": 2, "eta": 1},
                    branch_from={"checkpoint_dir": "p", "step": 2})
    for fragment in ("unknown key(s) ['eta']", "doremi.reference_checkpoint_dir",
                     "doremi.step_size", "doremi.smoothing", "cannot be combined"):
        assert fragment in str(info.value)
    short = TrainConfig(**base, doremi={"reference_checkpoint_dir": "r"})
    spelt = TrainConfig(**base, doremi={"reference_checkpoint_dir": "r", "step_size": 1.0,
                                        "smoothing": 0.001})
    assert short.doremi == spelt.doremi and short.fingerprint() == spelt.fingerprint()
    assert short.fingerprint() != TrainConfig(**base).fingerprint()
