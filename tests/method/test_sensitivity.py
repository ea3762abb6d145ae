import pytest

from autoscale_ds.method.ddo import DDOOptions, build_design
from autoscale_ds.errors import InputError
from autoscale_ds.formats.schemas import runs_from_dict
from autoscale_ds.method.sensitivity import (SKIPPED_NOISE_UNKNOWN, SKIPPED_OFF, estimate_relative_noise,
                                      skip_reason, weight_intervals)

from synthetic import make_runs

DOMAINS = ["web", "code", "books"]


def _design(**kwargs):
    payload = make_runs(DOMAINS, [0.5, 1.0, 0.2], [0.8, 0.5, 1.2], [2e6, 1e6, 1e6], **kwargs)
    return build_design(runs_from_dict(payload), DDOOptions())


def test_noise_is_estimated_from_repeated_base_runs():
    design = _design(base_repeats=40, noise=0.03, seed=1)
    assert estimate_relative_noise(design) == pytest.approx(0.03, rel=0.3)
    assert estimate_relative_noise(_design()) is None


def test_zero_noise_gives_degenerate_intervals_at_the_weight():
    report = weight_intervals(_design(), DDOOptions(), relative_sigma=0.0, draws=5)
    for interval in report.intervals.values():
        assert interval.lo == pytest.approx(interval.weight, abs=1e-9)
        assert interval.hi == pytest.approx(interval.weight, abs=1e-9)


def test_intervals_widen_with_noise_and_flag_moves_within_noise():
    design = _design()
    small = weight_intervals(design, DDOOptions(), relative_sigma=1e-4, draws=40, seed=3)
    large = weight_intervals(design, DDOOptions(), relative_sigma=0.05, draws=40, seed=3)
    for domain in DOMAINS:
        assert large.intervals[domain].hi - large.intervals[domain].lo > \
            small.intervals[domain].hi - small.intervals[domain].lo
    assert not any(iv.move_within_noise for iv in small.intervals.values())
    assert any(iv.move_within_noise for iv in large.intervals.values())


def test_same_seed_same_report_and_sigma_is_taken_from_replicates():
    design = _design(base_repeats=5, noise=0.01, seed=2)
    first = weight_intervals(design, DDOOptions(), draws=10, seed=9).to_dict()
    second = weight_intervals(design, DDOOptions(), draws=10, seed=9).to_dict()
    assert first == second
    assert first["sigma_source"].startswith("estimated from 1 group")


def test_without_replicates_or_sigma_the_error_says_what_to_pass():
    with pytest.raises(InputError, match="--noise-sigma"):
        weight_intervals(_design(), DDOOptions(), draws=5)


def test_the_report_is_made_whenever_the_noise_is_known():
    replicated, single = _design(base_repeats=2, noise=0.01), _design()
    assert skip_reason(replicated, None, draws=100) is None  # sigma from the repeated base run
    assert skip_reason(single, 0.02, draws=100) is None
    assert skip_reason(single, None, draws=100) == SKIPPED_NOISE_UNKNOWN
    assert skip_reason(replicated, None, draws=0) == SKIPPED_OFF
