import math

import numpy as np
import pytest

from autoscale_ds.method.ddo import DDOOptions, build_design, result_to_mixture, run_ddo, solve_design
from autoscale_ds.errors import InputError
from autoscale_ds.formats.schemas import check_mixture, runs_from_dict
from autoscale_ds.method.solve import solve_ddo

from synthetic import make_runs

DOMAINS = ["web", "code", "books", "wiki"]
A = [0.5, 1.0, 0.2, 2.0]
B = [0.8, 0.5, 1.2, 0.6]
BASE = [4e6, 2e6, 1e6, 1e6]


def _runs(**kwargs):
    return runs_from_dict(make_runs(DOMAINS, A, B, BASE, **kwargs))


def test_ddo_recovers_the_true_optimum_of_a_known_loss():
    result = run_ddo(_runs(ratios=(0.2, 0.5, 2.0, 3.0)), DDOOptions())
    for fit, a, b in zip(result.fits, A, B):
        assert (fit.a, fit.b) == pytest.approx((a, b), abs=1e-6)
    truth = solve_ddo(A, B, BASE, [0.2] * 4, [3.0] * 4)
    assert result.solution.ratios == pytest.approx(truth.ratios, abs=1e-6)
    assert result.solution.active == truth.active
    weights = result.weights
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-15)


def test_the_optimum_beats_the_base_on_the_true_loss():
    from synthetic import objective

    result = run_ddo(_runs(), DDOOptions())
    base_loss = objective(np.ones(4), np.array(A), np.array(B))
    assert objective(result.solution.ratios, np.array(A), np.array(B)) < base_loss


def test_mixture_tokens_are_whole_and_sum_to_the_base_budget():
    result = run_ddo(_runs(), DDOOptions())
    mixture = result_to_mixture(result, {})
    check_mixture(mixture)
    assert mixture.total_tokens == sum(BASE)
    assert all(isinstance(n, int) for n in mixture.tokens.values())
    assert sum(mixture.tokens.values()) == sum(BASE)
    assert set(mixture.provenance["active_bounds"]) == set(DOMAINS)


def test_replicated_base_runs_are_found_and_grouped():
    design = build_design(_runs(base_repeats=3, noise=0.01), DDOOptions())
    assert design.base_runs == ["base-seed0", "base-seed1", "base-seed2"]
    assert design.replicate_groups == [[0, 1, 2]]


def test_default_bounds_are_the_ratios_tried_and_overrides_apply():
    runs = _runs(ratios=(0.5, 2.0))
    assert run_ddo(runs, DDOOptions()).lower.tolist() == [0.5] * 4
    result = run_ddo(runs, DDOOptions(min_ratio=0.8, max_ratio=1.5, ratio_bounds={"wiki": (1.0, 1.0)}))
    assert result.lower.tolist() == [0.8, 0.8, 0.8, 1.0]
    assert result.upper.tolist() == [1.5, 1.5, 1.5, 1.0]
    assert result.solution.active[3] == "fixed"


def test_available_tokens_and_epochs_cap_a_domain():
    uncapped = run_ddo(_runs(), DDOOptions())
    books_tokens = uncapped.optimal_tokens[2]
    assert books_tokens > 1.2e6  # books is the most valuable domain here
    capped = run_ddo(_runs(), DDOOptions(available_tokens={"books": 0.6e6}, max_epochs=2))
    assert capped.optimal_tokens[2] == pytest.approx(1.2e6)
    assert capped.solution.active[2] == "upper"


def test_cap_below_minimum_is_a_clear_error():
    with pytest.raises(InputError, match="'books' needs at least .* max_epochs"):
        run_ddo(_runs(), DDOOptions(available_tokens={"books": 1e5}))


def test_loss_and_perplexity_objectives_convert():
    loss_runs = make_runs(DOMAINS, A, B, BASE, metric="loss")
    for run in loss_runs["runs"]:
        run["eval"] = {"held_out": math.log(run["eval"]["held_out"])}
    as_ppl = run_ddo(runs_from_dict(loss_runs), DDOOptions(metric="perplexity"))
    direct = run_ddo(_runs(), DDOOptions())
    assert as_ppl.solution.ratios == pytest.approx(direct.solution.ratios, rel=1e-9)


def test_failed_runs_are_skipped_and_missing_data_is_named():
    payload = make_runs(DOMAINS, A, B, BASE)
    payload["runs"][1]["status"] = "failed"  # web at 0.2
    with pytest.raises(InputError, match="'web' has 1 perturbed ratio"):
        run_ddo(runs_from_dict(payload), DDOOptions())
    result = run_ddo(runs_from_dict(payload), DDOOptions(allow_incomplete=True))
    assert result.pinned == {"web": "too few perturbed runs"}
    assert result.solution.ratios[0] == 1.0


def test_runs_changing_two_domains_are_rejected():
    payload = make_runs(DOMAINS, A, B, BASE)
    payload["runs"][1]["train_tokens"]["code"] *= 2
    with pytest.raises(InputError, match="changes 2 domains at once"):
        run_ddo(runs_from_dict(payload), DDOOptions())


def test_flat_domain_keeps_its_base_quantity(caplog):
    payload = make_runs(DOMAINS, A, B, BASE)
    for run in payload["runs"]:
        if run["id"].startswith("wiki"):
            run["eval"]["held_out"] = payload["runs"][0]["eval"]["held_out"] * 1.01
    result = run_ddo(runs_from_dict(payload), DDOOptions())
    assert "wiki" in result.pinned and result.solution.ratios[3] == 1.0
    assert "flat fit" in caplog.text


# ------------------------------------------------------------------- one eval set

FINGERPRINT_A = "1a2b3c4d5e6f" + "0" * 52
FINGERPRINT_B = "9f8e7d6c5b4a" + "1" * 52


def _with_eval_sets(fingerprints):
    """make_runs rows, each tagged with the eval set at the same index (None: no record)."""
    payload = make_runs(DOMAINS, A, B, BASE)
    for run, fingerprint in zip(payload["runs"], fingerprints):
        if fingerprint is not None:
            run["eval_set"] = {"fingerprint": fingerprint, "tokens": {"held_out": 4096}}
    return payload


def test_one_eval_set_is_recorded_for_the_provenance():
    design = build_design(runs_from_dict(_with_eval_sets([FINGERPRINT_A] * 9)), DDOOptions())
    assert design.eval_set == {"fingerprint": FINGERPRINT_A, "mixed": False,
                               "tokens": {"held_out": 4096}}


def test_runs_without_any_eval_set_record_proceed():
    design = build_design(_runs(), DDOOptions())
    assert design.eval_set == {"fingerprint": None, "mixed": False}


def test_different_eval_sets_are_refused_naming_the_runs_on_each_side():
    fingerprints = [FINGERPRINT_A] * 9
    fingerprints[3] = FINGERPRINT_B  # code-x0.2
    with pytest.raises(InputError) as info:
        build_design(runs_from_dict(_with_eval_sets(fingerprints)), DDOOptions())
    message = str(info.value)
    assert "runs measured on different eval sets" in message
    assert "base-seed0, web-x0.2, web-x3, code-x3, books-x0.2, books-x3 and 2 more on 1a2b3c4d5e6f..." \
        in message
    assert "; code-x0.2 on 9f8e7d6c5b4a..." in message
    assert "--allow-mixed-eval" in message and "\n" not in message


def test_rows_lacking_the_record_among_rows_having_it_count_as_mixed():
    fingerprints = [FINGERPRINT_A] * 8 + [None]  # wiki-x3 was written by hand
    with pytest.raises(InputError, match="wiki-x3 on no recorded eval set"):
        build_design(runs_from_dict(_with_eval_sets(fingerprints)), DDOOptions())


def test_failed_rows_do_not_count_towards_the_eval_set_check():
    fingerprints = [FINGERPRINT_A] * 9 + [FINGERPRINT_B]
    payload = _with_eval_sets(fingerprints)
    payload["runs"].append(dict(payload["runs"][1], id="web-x0.2-old", status="failed",
                                eval_set={"fingerprint": FINGERPRINT_B}))
    design = build_design(runs_from_dict(payload), DDOOptions())
    assert design.eval_set["fingerprint"] == FINGERPRINT_A


def test_mixed_eval_sets_when_allowed_warn_and_are_recorded(caplog):
    fingerprints = [FINGERPRINT_A] * 8 + [FINGERPRINT_B]
    runs = runs_from_dict(_with_eval_sets(fingerprints))
    design = build_design(runs, DDOOptions(allow_mixed_eval=True))
    assert "different eval sets (allowed)" in caplog.text
    assert design.eval_set["mixed"] is True and design.eval_set["fingerprint"] is None
    assert design.eval_set["groups"][1] == {"fingerprint": FINGERPRINT_B, "runs": ["wiki-x3"]}
    mixture = result_to_mixture(solve_design(design, DDOOptions()), {"eval_set": design.eval_set})
    assert mixture.provenance["eval_set"]["mixed"] is True
