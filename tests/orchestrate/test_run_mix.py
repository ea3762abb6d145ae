"""`autoscale mix` with proxy runs (regmix, doremi) end to end on CPU, tiny: the mixture
round-trips, the report is written, and a rerun trains nothing."""

import json

import pytest

from autoscale_ds.formats.schemas import load_mixture
from autoscale_ds.orchestrate.mix import check_mix, run_mix
from autoscale_ds.orchestrate.mix_config import mix_config_from

pytest.importorskip("deepspeed")

pytestmark = pytest.mark.slow

DOMAINS = ["code", "docstrings", "comments"]
TRAIN = {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8,
         "eval_samples_per_domain": 4, "learning_rate": 3e-3, "max_epochs": 1}


def _config(prepared, tmp_path, method, **section):
    return mix_config_from({
        "manifest": str(prepared.root / "manifest.yaml"), "method": method,
        "out": str(tmp_path / f"{method}.json"), "output_dir": str(tmp_path / method),
        "domains": DOMAINS, "target_tokens": "1M", "train": dict(TRAIN),
        "executor": {"kind": "inprocess"}, method: section})


def test_regmix_fits_its_proxies_and_a_rerun_trains_nothing(prepared, tmp_path):
    config = _config(prepared, tmp_path, "regmix", runs=6, proxy_tokens=2048, folds=2,
                     regressor="ridge", candidates=2000, top_k=20)
    first = run_mix(config)
    assert len(first.trained) == 6 and not first.failed
    mixture = load_mixture(config.out)
    assert mixture.method == "regmix" and list(mixture.weights) == DOMAINS
    assert mixture.provenance["proxy_runs"] == 6
    # whole samples and steps: up to 2048 tokens each, as planned
    planned = [run.tokens_trained for run in check_mix(config).runs]
    assert mixture.provenance["proxy_tokens_trained"] == sum(planned) and max(planned) <= 2048
    report = json.loads((tmp_path / "regmix" / "regmix_report.json").read_text())
    assert report["ok_runs"] == 6 and report["regressor"]["kind"] == "ridge"
    assert set(report["held_out"]) >= {"spearman", "r2", "mae"}
    assert report["optimum"]["weights"] == mixture.weights
    runs_file = tmp_path / "regmix" / "regmix_runs.json"
    before = runs_file.read_bytes(), (tmp_path / "regmix.json").read_bytes()

    again = run_mix(config)
    assert again.trained == []
    assert (runs_file.read_bytes(), (tmp_path / "regmix.json").read_bytes()) == before


def test_doremi_reference_then_proxy_and_a_rerun_trains_nothing(prepared, tmp_path):
    config = _config(prepared, tmp_path, "doremi", proxy_tokens=2048, reference_tokens=1024)
    first = run_mix(config)
    assert first.trained == ["doremi-reference", "doremi-proxy"]
    mixture = load_mixture(config.out)
    assert mixture.method == "doremi"
    record = mixture.provenance["doremi"]
    assert record["average_weights"] == mixture.weights
    assert record["base_weights"] == pytest.approx({d: 1 / 3 for d in DOMAINS}, abs=0.02)
    reference, proxy = check_mix(config).runs  # 768 and 1792 tokens: whole samples, whole steps
    assert mixture.provenance["proxy_tokens_trained"] == reference.tokens_trained + proxy.tokens_trained
    assert (tmp_path / "doremi" / record["trajectory"]).exists()
    assert (tmp_path / "doremi" / "doremi_weights.png").exists()
    before = (tmp_path / "doremi.json").read_bytes()

    assert run_mix(config).trained == []
    assert (tmp_path / "doremi.json").read_bytes() == before
