"""Per-domain fixed-length samples: Megatron-style cutting, seeded order, epochs."""

import numpy as np
import pytest

from autoscale_ds.data.indexed import build_store, open_domain_store
from autoscale_ds.data.samples import DomainSamples
from autoscale_ds.errors import InputError


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    documents = [rng.integers(1, 1000, size=int(n)) for n in rng.integers(0, 40, size=60)]
    return build_store(tmp_path / "d", documents, np.uint16), documents


def _epoch_stream(samples: DomainSamples, epoch: int) -> np.ndarray:
    doc_order, _, _ = samples._epoch(epoch)
    return np.concatenate([np.asarray(samples._tokens[samples._doc_starts[d]:
                                                      samples._doc_starts[d] + samples._doc_lengths[d]])
                           for d in doc_order])


def test_samples_tile_the_shuffled_document_stream(store):
    store, documents = store
    samples = DomainSamples(store, seq_len=16, seed=3, name="web")
    assert samples.num_tokens == sum(len(d) for d in documents)
    assert len(samples) == (samples.num_tokens - 1) // 16
    stream = _epoch_stream(samples, 0)
    _, _, sample_order = samples._epoch(0)
    for k in range(len(samples)):
        start = int(sample_order[k]) * 16
        assert np.array_equal(samples[k], stream[start:start + 17])
    # Every position of the epoch's stream is used, each sample overlapping the next by one.
    assert sorted(sample_order.tolist()) == list(range(len(samples)))


def test_order_depends_on_seed_and_name_only(store):
    store, _ = store
    a = DomainSamples(store, 16, seed=1, name="web")
    b = DomainSamples(store, 16, seed=1, name="web")
    c = DomainSamples(store, 16, seed=2, name="web")
    d = DomainSamples(store, 16, seed=1, name="code")
    first = [a[k].tolist() for k in range(10)]
    assert first == [b[k].tolist() for k in range(10)]
    assert first != [c[k].tolist() for k in range(10)]
    assert first != [d[k].tolist() for k in range(10)]


def test_later_epochs_reshuffle_and_are_counted(store):
    store, _ = store
    samples = DomainSamples(store, 16, seed=0, name="web")
    per_epoch = len(samples)
    epoch0 = [samples[k].tolist() for k in range(per_epoch)]
    epoch1 = [samples[per_epoch + k].tolist() for k in range(per_epoch)]
    assert epoch0 != epoch1
    plan = samples.plan(per_epoch * 2 + 1)
    assert plan.repeats and plan.epochs == pytest.approx(2 + 1 / per_epoch)


def test_max_epochs_turns_an_over_request_into_a_clear_error(store):
    store, _ = store
    samples = DomainSamples(store, 16, seed=0, name="web", max_epochs=1.5)
    samples.plan(len(samples))  # fine
    with pytest.raises(InputError) as info:
        samples.plan(2 * len(samples))
    message = str(info.value)
    assert "'web'" in message and f"{2 * len(samples) * 16:,} tokens" in message
    assert f"has {samples.num_tokens:,} tokens" in message and "max_epochs=1.5" in message
    with pytest.raises(InputError, match="max_epochs"):
        samples[2 * len(samples)]


def test_a_domain_smaller_than_one_sample_is_named(tmp_path):
    tiny = build_store(tmp_path / "tiny", [np.arange(5)], np.uint16)
    with pytest.raises(InputError, match="domain 'tiny' has 5 tokens, fewer than one sample of 17"):
        DomainSamples(tiny, 16, seed=0, name="tiny")


def test_real_prepared_domain_samples(prepared):
    store = open_domain_store(prepared, "docstrings")
    samples = DomainSamples(store, 64, seed=0, name="docstrings")
    eod = prepared.tokenizer["eod_id"]
    tokens = np.concatenate([samples[k] for k in range(50)])
    assert tokens.max() < prepared.tokenizer["vocab_size"] and (tokens == eod).any()
