import math

import numpy as np
import pytest

from autoscale_ds.errors import InputError
from autoscale_ds.method.baselines import natural_weights, temperature_weights, unimax_weights

TOKENS = {"web": 600.0, "code": 250.0, "books": 100.0, "wiki": 40.0, "math": 10.0}


def _vector(weights):
    return np.array(list(weights.values()))


def test_natural_is_each_domains_share_of_tokens_in_input_order():
    weights = natural_weights(TOKENS)
    assert list(weights) == list(TOKENS)
    assert weights["web"] == pytest.approx(0.6) and weights["math"] == pytest.approx(0.01)
    assert math.fsum(weights.values()) == pytest.approx(1.0)


def test_temperature_one_is_natural():
    assert _vector(temperature_weights(TOKENS, 1.0)) == pytest.approx(_vector(natural_weights(TOKENS)))


def test_large_temperature_tends_to_uniform_and_infinity_is_uniform():
    assert _vector(temperature_weights(TOKENS, 1e6)) == pytest.approx(np.full(5, 0.2), abs=1e-5)
    assert _vector(temperature_weights(TOKENS, math.inf)) == pytest.approx(np.full(5, 0.2))


def test_temperature_flattens_monotonically():
    # The largest domain loses and the smallest gains weight as tau grows; the spread shrinks.
    taus = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0]
    mixtures = [temperature_weights(TOKENS, tau) for tau in taus]
    largest = [m["web"] for m in mixtures]
    smallest = [m["math"] for m in mixtures]
    spread = [max(m.values()) - min(m.values()) for m in mixtures]
    assert largest == sorted(largest, reverse=True) and smallest == sorted(smallest)
    assert spread == sorted(spread, reverse=True)
    assert temperature_weights(TOKENS, 2.0)["web"] == pytest.approx(
        math.sqrt(600) / sum(math.sqrt(t) for t in TOKENS.values()))


def test_temperature_survives_huge_counts_and_tiny_tau():
    weights = temperature_weights({"a": 1e15, "b": 1e12}, 0.01)
    assert weights["a"] == pytest.approx(1.0) and math.isfinite(weights["b"])


@pytest.mark.parametrize("tau", [0, -1.0, float("nan"), "2", None, True])
def test_temperature_rejects_a_bad_tau(tau):
    with pytest.raises(InputError, match="tau"):
        temperature_weights(TOKENS, tau)


def test_unimax_hand_worked_example_with_redistribution():
    # Budget 400, at most 2 epochs. Smallest first:
    #   a (10):   400/4 = 100 > cap 20  -> 20,  left 380
    #   b (50):   380/3 = 126.7 > cap 100 -> 100, left 280
    #   c (100):  280/2 = 140 <= cap 200 -> 140, left 140
    #   d (1000): 140/1 = 140 <= cap 2000 -> 140
    # What a and b could not take (80 + 26.7) went to c and d.
    weights = unimax_weights({"d": 1000, "b": 50, "a": 10, "c": 100}, 400, 2)
    assert list(weights) == ["d", "b", "a", "c"]
    assert weights == pytest.approx({"a": 0.05, "b": 0.25, "c": 0.35, "d": 0.35})


def test_unimax_is_uniform_when_no_cap_binds():
    assert _vector(unimax_weights(TOKENS, 50, 4)) == pytest.approx(np.full(5, 0.2))


def test_unimax_with_every_domain_capped_is_natural():
    # The budget equals all tokens at the cap: every domain is used exactly max_epochs times.
    weights = unimax_weights(TOKENS, 1000 * 3, 3)
    assert _vector(weights) == pytest.approx(_vector(natural_weights(TOKENS)))


def test_unimax_cannot_fill_the_budget_says_what_is_missing_and_what_would_suffice():
    with pytest.raises(InputError) as caught:
        unimax_weights(TOKENS, 5000, 4)  # 1000 tokens x 4 epochs = 4000 < 5000
    message = str(caught.value)
    assert "1000 tokens short" in message and "max_epochs >= 5" in message


@pytest.mark.parametrize("function", [natural_weights, lambda t: temperature_weights(t, 2.0),
                                      lambda t: unimax_weights(t, 100, 4)])
@pytest.mark.parametrize("tokens, fragment", [
    ({}, "empty"),
    ({"web": 100, "code": 0}, "'code'"),
    ({"web": 100, "code": -5}, "'code'"),
    ({"web": float("nan"), "code": 5}, "'web'"),
    ({"web": 100, "code": float("inf")}, "'code'"),
    ({"web": 100, "code": "5"}, "'code'"),
    ([("web", 100)], "mapping"),
])
def test_bad_token_counts_are_named(function, tokens, fragment):
    with pytest.raises(InputError, match=fragment):
        function(tokens)


@pytest.mark.parametrize("budget, epochs, label", [(0, 4, "budget_tokens"), (100, 0, "max_epochs"),
                                                    (float("nan"), 4, "budget_tokens"),
                                                    (100, -1, "max_epochs")])
def test_unimax_rejects_a_bad_budget_or_epoch_cap(budget, epochs, label):
    with pytest.raises(InputError, match=label):
        unimax_weights(TOKENS, budget, epochs)
