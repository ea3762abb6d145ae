"""The fixed eval set: it belongs to the data (eval_seed), not to the run (seed, mixture)."""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from autoscale_ds.data.indexed import open_domain_store  # noqa: E402
from autoscale_ds.train.evaluate import _eval_summary, build_eval_set  # noqa: E402

from test_train import SEQ_LEN, _config, _row, _train  # noqa: E402

pytestmark = pytest.mark.slow

DOMAINS = ["code", "docstrings", "comments", "reference"]


def test_uncapped_eval_set_is_the_whole_validation_split_in_order(prepared):
    eval_set = build_eval_set(prepared, DOMAINS, SEQ_LEN, eval_seed=0, max_tokens_per_domain=0)
    store = open_domain_store(prepared, "code", "valid")
    flat = np.asarray(store.tokens_view(), dtype=np.int64)
    store.close()
    rows = eval_set.tokens[eval_set.domain_ids == 0].numpy()
    assert eval_set.tokens_per_domain["code"] == len(rows) * SEQ_LEN == \
        (len(flat) - 1) // SEQ_LEN * SEQ_LEN
    # Stride seq_len, window seq_len + 1: every held-out token after the first is a label once.
    assert np.array_equal(rows[:, :-1].reshape(-1), flat[:len(rows) * SEQ_LEN])
    assert np.array_equal(rows[:, -1], flat[SEQ_LEN:(len(rows) + 1) * SEQ_LEN:SEQ_LEN])
    halves = eval_set.half_ids[eval_set.domain_ids == 0].numpy()
    assert list(halves[:4]) == [0, 1, 0, 1]


def test_cap_draws_by_eval_seed_and_fingerprint_follows_the_tokens(prepared):
    a = build_eval_set(prepared, DOMAINS, SEQ_LEN, eval_seed=7, max_tokens_per_domain=8 * SEQ_LEN)
    again = build_eval_set(prepared, DOMAINS, SEQ_LEN, eval_seed=7, max_tokens_per_domain=8 * SEQ_LEN)
    other = build_eval_set(prepared, DOMAINS, SEQ_LEN, eval_seed=8, max_tokens_per_domain=8 * SEQ_LEN)
    assert a.tokens_per_domain == {d: 8 * SEQ_LEN for d in DOMAINS}
    assert a.fingerprint == again.fingerprint and torch.equal(a.tokens, again.tokens)
    assert a.fingerprint != other.fingerprint
    assert a.describe() == {"fingerprint": a.fingerprint, "tokens": a.tokens_per_domain}


def test_halves_combine_to_the_whole_set():
    sums = torch.tensor([[2.0, 6.0], [3.0, 3.0]], dtype=torch.float64)
    counts = torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.float64)
    summary = _eval_summary(["a", "b"], sums, counts)
    assert summary["loss"] == {"a": 2.0, "b": 1.5}
    assert summary["perplexity_halves"][0]["a"] == pytest.approx(np.exp(2.0))
    assert summary["perplexity_halves"][1]["b"] == pytest.approx(np.exp(1.5))


def test_eval_fingerprint_is_identical_across_seeds_and_mixtures(tmp_path, prepared):
    capped = {"eval_samples_per_domain": None, "eval_tokens_per_domain": 6 * SEQ_LEN}
    runs = {
        "seed0": _config(tmp_path, prepared, "seed0", seed=0, **capped),
        "seed1_other_mix": _config(tmp_path, prepared, "seed1_other_mix", seed=1,
                                   tokens_per_domain={"code": 24 * SEQ_LEN, "docstrings": 8 * SEQ_LEN,
                                                      "comments": 8 * SEQ_LEN,
                                                      "reference": 8 * SEQ_LEN}, **capped),
        "other_eval_seed": _config(tmp_path, prepared, "other_eval_seed", seed=0, eval_seed=99,
                                   **capped),
    }
    rows = {}
    for name, path in runs.items():
        _train(path, launcher=[sys.executable])
        rows[name] = _row(path)
    fingerprints = {name: row["eval_set"]["fingerprint"] for name, row in rows.items()}
    assert fingerprints["seed0"] == fingerprints["seed1_other_mix"]
    assert fingerprints["other_eval_seed"] != fingerprints["seed0"]
    assert rows["seed0"]["eval_set"]["tokens"] == {d: 6 * SEQ_LEN for d in DOMAINS}
    assert rows["seed0"]["eval"] != rows["seed1_other_mix"]["eval"]  # the models do differ
    halves = rows["seed0"]["eval_halves"]
    assert len(halves) == 2 and set(halves[0]) == set(DOMAINS)
    assert 0 <= rows["seed0"]["eval_seconds"] <= rows["seed0"]["wall_seconds"]
