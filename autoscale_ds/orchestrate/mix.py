"""``autoscale mix``: every baseline mixture method behind one command.

- ``natural``, ``temperature``, ``unimax``: closed forms of the manifest's training tokens per
  domain (:mod:`autoscale_ds.method.baselines`); no training.
- ``regmix`` (Liu et al. 2024): N proxy runs on Dirichlet mixtures centred on the natural one,
  a regression from mixture to the runs' final validation loss, the top-k search
  (:mod:`autoscale_ds.method.regmix`).
- ``doremi`` (Xie et al. 2023): a reference run on the base mixture, then one DoReMi proxy run
  (:mod:`autoscale_ds.train.doremi`); the answer is its averaged domain weights.

Every method writes one ``autoscale.mixture/v1`` file whose ``method`` is the method's name
and whose ``provenance`` records the settings, the manifest (path and SHA-256), the proxy
tokens trained and the method's own report. Proxy runs go through the sweeps' executors and a
runs file keyed by each run's config fingerprint, so a killed ``autoscale mix`` rerun trains
only what is missing; with the same config and seed the mixture file is byte-identical.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..atomic import atomic_write_json, file_sha256
from ..errors import InputError
from ..formats.schemas import Mixture, save_mixture
from .mix_config import CLOSED_FORM, DEFAULT_UNIMAX_EPOCHS, MixConfig
from .settings import Problems, is_whole, output_dir_problem

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
SUMMARY_SCHEMA = "autoscale.mix_summary/v1"
REGMIX_REPORT = "regmix_report.json"
DOREMI_PLOT = "doremi_weights.png"
EPOCH_CAP_MARGIN = 0.99
"""Proxy mixtures stay 1 % under the exact epoch cap: whole samples round a domain up a little."""


class RunsFailed(Exception):
    """The proxy runs a method needs failed: nothing to compute the mixture from (exit 3)."""


# ----------------------------------------------------------------------------- check


@dataclass
class CheckedMix:
    """What the config builds before any proxy run."""

    manifest_path: Path
    domains: List[str]
    available_tokens: Dict[str, int]
    """Training tokens per domain in the manifest."""
    target_tokens: int
    weights: Optional[Dict[str, float]] = None
    """A closed-form method's answer (computed at check time: it is cheap)."""
    runs: list = field(default_factory=list)
    """ProxyRuns in plan order (regmix: the sampled mixtures; doremi: reference, proxy)."""
    caps: Optional[Dict[str, float]] = None
    """RegMix: each domain's maximum proxy weight (max_epochs), also used by the search."""
    executor: Any = None


def check_mix(config: MixConfig) -> CheckedMix:
    """Load the manifest, compute or plan the method, build the executor; every problem is
    raised at once, before the first proxy run."""
    from ..formats.manifest import load_manifest

    problems = Problems()
    _check_paths(problems, config)
    manifest = problems.attempt(None, load_manifest, config.manifest)
    if manifest is None:
        problems.raise_if_any(config.origin)
    domains = config.domains or list(manifest.domains)
    missing = [d for d in domains if d not in manifest.domains]
    if missing:
        problems.add("domains", f"{missing} are not in {config.manifest}; it has "
                     f"{', '.join(manifest.domains)}")
        problems.raise_if_any(config.origin)
    available = {d: int(manifest.domains[d].train.tokens) for d in domains}
    target = int(round(config.target_tokens or sum(available.values())))
    checked = CheckedMix(_manifest_file(config.manifest), domains, available, target)
    if config.method in CLOSED_FORM:
        checked.weights = problems.attempt(None, closed_form_weights, config, available, target)
    else:
        checked.executor = problems.attempt("executor", _executor, config.executor)
        plan = problems.attempt(config.method, _PLANNERS[config.method], config, manifest,
                                domains, available)
        if plan is not None:
            checked.runs, checked.caps = plan
            problems.attempt("output_dir", _check_recorded_runs, config, checked.runs)
    problems.raise_if_any(config.origin)
    return checked


def runs_file(config: MixConfig) -> Path:
    return Path(config.output_dir) / f"{config.method}_runs.json"


def _check_recorded_runs(config: MixConfig, runs: list) -> None:
    """Refuse a work directory whose runs file holds runs of other settings: their ids are
    this plan's (regmix-000, ...), and one runs file cannot hold an id twice."""
    from .runs_store import RunsStore

    path = runs_file(config)
    if not path.exists():
        return
    keys = {run.key for run in runs}
    other = [row["id"] for key, row in RunsStore(path, []).rows.items() if key not in keys]
    if other:
        raise InputError(f"{path} holds {len(other)} run(s) trained with other settings (e.g. "
                         f"{other[0]}); use another output_dir, or move that one away")


def _check_paths(problems: Problems, config: MixConfig) -> None:
    out = Path(config.out)
    if out.is_dir():
        problems.add("out", f"{out} is a directory; give a file name such as mixture.json")
    elif out.exists() and Path(config.manifest).exists() and out.resolve() == Path(config.manifest).resolve():
        problems.add("out", f"{out} is the manifest; it would be overwritten")
    parent_problem = output_dir_problem(out.parent) if str(out.parent) else None
    if parent_problem:
        problems.add("out", parent_problem)
    if config.output_dir is not None:
        in_the_way = output_dir_problem(config.output_dir)
        if in_the_way:
            problems.add("output_dir", in_the_way)


def _manifest_file(path) -> Path:
    path = Path(path)
    return path / "manifest.yaml" if path.is_dir() else path


def _executor(spec: dict):
    from .executors import make_executor

    try:
        return make_executor(spec)
    except TypeError as exc:
        raise InputError(str(exc)) from None


def closed_form_weights(config: MixConfig, available: Dict[str, int], target: int) -> Dict[str, float]:
    from ..method.baselines import natural_weights, temperature_weights, unimax_weights

    if config.method == "natural":
        return natural_weights(available)
    if config.method == "temperature":
        return temperature_weights(available, config.tau_used)
    epochs = float(config.max_epochs) if config.max_epochs is not None else DEFAULT_UNIMAX_EPOCHS
    try:
        return unimax_weights(available, target, epochs)
    except InputError as exc:
        raise InputError(f"target_tokens: {exc}") from None


def _proxy_run(config: MixConfig, run_id: str, tokens: Dict[str, int], seed: int,
               extra: Optional[dict] = None):
    from ..train.config import TrainConfig
    from .settings import one_line
    from .sweep import ProxyRun

    settings = {"progress": False, **config.train, **(extra or {})}
    try:
        train = TrainConfig(manifest=str(Path(config.manifest).resolve()),
                            output_dir=str(Path(config.output_dir).resolve() / "runs" / run_id),
                            tokens_per_domain=dict(tokens), run_id=run_id, seed=seed, **settings)
    except InputError as exc:
        raise InputError(f"train: {one_line(exc)}") from None
    return ProxyRun(run_id, train)


def _plan_regmix(config: MixConfig, manifest, domains: List[str],
                 available: Dict[str, int]) -> Tuple[list, Optional[Dict[str, float]]]:
    """RegMix's proxy runs: Dirichlet mixtures centred on the natural one, each a whole number
    of samples and optimizer steps; with max_epochs (regmix's, else train's) no proxy asks a
    domain for more than that many passes over its tokens."""
    from ..method.regmix import required_runs, sample_mixtures
    from ..train.plan import plan_samples
    from .sweep import sequence_and_batch

    settings = config.regmix
    needed = required_runs(len(domains), settings["folds"])
    if settings["runs"] < needed:
        raise InputError(f"runs: the regression needs at least {needed} ok runs for "
                         f"{len(domains)} domains and {settings['folds']} folds, got "
                         f"{settings['runs']} (raise runs, or lower regmix.folds)")
    seq_len, batch = sequence_and_batch(config.train)
    caps = _regmix_caps(config, available)
    rows = sample_mixtures(available, settings["runs"], settings["seed"], max_weight=caps)
    runs = []
    for index, row in enumerate(rows):
        wanted = {d: float(w) * settings["proxy_tokens"] for d, w in zip(domains, row)}
        tokens = plan_samples(wanted, seq_len, batch).tokens_per_domain
        runs.append(_proxy_run(config, f"regmix-{index:03d}", tokens, settings["seed"]))
    return runs, caps


def _regmix_caps(config: MixConfig, available: Dict[str, int]) -> Optional[Dict[str, float]]:
    from ..method.regmix import epoch_caps

    epochs = config.regmix["max_epochs"] or config.train.get("max_epochs")
    if epochs is None:
        return None
    caps = epoch_caps(available, config.regmix["proxy_tokens"], float(epochs) * EPOCH_CAP_MARGIN)
    return caps


def _plan_doremi(config: MixConfig, manifest, domains: List[str],
                 available: Dict[str, int]) -> Tuple[list, None]:
    """The reference run on the base mixture, then the DoReMi proxy that starts from the same
    base weights and compares its losses with the reference's final checkpoint."""
    from .sweep import named_weights, samples_to_tokens, sequence_and_batch, whole_step_samples

    settings = config.doremi
    seq_len, batch = sequence_and_batch(config.train)
    base = named_weights(settings["base"], domains, manifest)
    reference_tokens = settings["reference_tokens"] or settings["proxy_tokens"]

    def budget(total: float) -> Dict[str, int]:
        samples = whole_step_samples({d: base[d] * total for d in domains}, seq_len, batch)
        return samples_to_tokens(samples, seq_len)

    reference = _proxy_run(config, "doremi-reference", budget(reference_tokens), settings["seed"])
    doremi = {"reference_checkpoint_dir": str(reference.output_dir / "checkpoints"),
              "step_size": settings["step_size"], "smoothing": settings["smoothing"]}
    proxy = _proxy_run(config, "doremi-proxy", budget(settings["proxy_tokens"]), settings["seed"],
                       {"doremi": doremi})
    return [reference, proxy], None


_PLANNERS = {"regmix": _plan_regmix, "doremi": _plan_doremi}


# ----------------------------------------------------------------------------- run


@dataclass
class MixResult:
    mixture: Mixture
    mixture_path: Path
    proxy_runs: int = 0
    proxy_tokens_trained: int = 0
    trained: List[str] = field(default_factory=list)
    """Run ids trained by this invocation (the others were done before)."""
    failed: List[str] = field(default_factory=list)
    report_path: Optional[Path] = None
    plot_path: Optional[Path] = None
    summary_path: Optional[Path] = None


def run_mix(config: MixConfig, executor=None) -> MixResult:
    """Check everything, run what the method needs, write the mixture (and summary.json)."""
    checked = check_mix(config)
    if config.method in CLOSED_FORM:
        result = MixResult(_write_mixture(config, checked, checked.weights, {}), Path(config.out))
    else:
        from .runner import lock_output_dir

        lock = lock_output_dir(Path(config.output_dir))
        try:
            result = _RUNNERS[config.method](config, checked, executor or checked.executor)
        finally:
            lock.release()
    if config.output_dir is not None:
        result.summary_path = _write_summary(config, result)
    return result


def _train_missing(config: MixConfig, plan: list, executor, runs: Optional[list] = None):
    """Train those of ``runs`` (default: the whole plan) not yet in the runs file; returns
    (store, ids trained now)."""
    from .runner import _pending  # the sweeps' rule of what is done, reused as is
    from .runs_store import RunsStore

    runs = plan if runs is None else runs
    store = RunsStore(runs_file(config), [r.run_id for r in plan])
    pending = _pending(runs, store, config.retry_failed)
    logger.info("mix %s: %d proxy runs planned; to train now: %s", config.method, len(plan),
                ", ".join(r.run_id for r in pending) or "none")
    executor.execute(pending, _recorder(store, config.method, len(pending)))
    return store, [r.run_id for r in pending]


def _recorder(store, method: str, total: int):
    """Record each finished run and log one progress line (a proxy run takes minutes)."""
    import time

    started = time.monotonic()
    finished = 0

    def record(run, row: dict) -> None:
        nonlocal finished
        store.record(run.run_id, run.key, row)
        finished += 1
        elapsed_s = time.monotonic() - started
        outcome = "ok" if row.get("status") == "ok" else f"FAILED ({row.get('reason', '')[:120]})"
        logger.info("mix %s: %d/%d runs done (%s: %s), %.0f s elapsed, ~%.0f s left", method,
                    finished, total, run.run_id, outcome, elapsed_s,
                    elapsed_s / finished * (total - finished))
    return record


def _tokens_trained(row: dict, run) -> int:
    """Tokens a run's optimizer steps trained (a failed run counts the steps it took)."""
    steps = row.get("steps")
    return int(steps) * run.config.global_batch_size * run.config.seq_len if is_whole(steps) else 0


def _run_regmix(config: MixConfig, checked: CheckedMix, executor) -> MixResult:
    store, trained = _train_missing(config, checked.runs, executor)
    rows = {r.run_id: store.rows_for([r.key])[0] for r in checked.runs if store.rows_for([r.key])}
    table, failed = _regmix_table(checked, rows)
    if not table:
        raise RunsFailed(f"regmix: {len(failed)} of {len(checked.runs)} proxy runs failed; nothing "
                         f"to fit (see {config.output_dir}/runs/*/train.log)")
    model, optimum = _fit_and_search(config, checked, table)
    report = _regmix_report(checked, table, failed, model, optimum)
    report_path = Path(config.output_dir) / REGMIX_REPORT
    atomic_write_json(report_path, report)
    tokens_trained = sum(_tokens_trained(rows[r.run_id], r) for r in checked.runs if r.run_id in rows)
    specifics = {"proxy_tokens_trained": tokens_trained, "proxy_runs": len(checked.runs),
                 "regmix": {k: report[k] for k in ("objective", "ok_runs", "failed_runs",
                                                   "held_out", "regressor", "optimum")},
                 "report": REGMIX_REPORT}
    mixture = _write_mixture(config, checked, optimum.weights, specifics)
    return MixResult(mixture, Path(config.out), len(checked.runs), tokens_trained, trained,
                     [f["id"] for f in failed], report_path=report_path)


def _fit_and_search(config: MixConfig, checked: CheckedMix, table: List[dict]):
    """The regression on the ok runs (with its k-fold held-out report), then the top-k search
    over the proxies' own prior and caps."""
    from ..method.regmix import fit_regression, search_optimum

    settings = config.regmix
    try:
        model = fit_regression([e["weights"] for e in table], [e["objective"] for e in table],
                               settings["regressor"], seed=settings["seed"], folds=settings["folds"])
    except InputError as exc:  # too few ok runs: the proxies failed, the config was fine
        raise RunsFailed(f"regmix: {exc}") from None
    natural = {d: float(checked.available_tokens[d]) for d in checked.domains}
    # seed + 1: the search's candidates are fresh draws, not the proxies' own mixtures again
    optimum = search_optimum(model, natural, settings["seed"] + 1, settings["candidates"],
                             settings["top_k"], max_weight=checked.caps)
    return model, optimum


def _regmix_table(checked: CheckedMix, rows: Dict[str, dict]) -> Tuple[List[dict], List[dict]]:
    """One entry per ok run: the proportions it actually trained and its objective, the
    unweighted mean of its final validation loss over the mixture's domains (every domain
    counts alike; RegMix's paper targets one held-out set, here each domain's own). Failed
    runs, and runs missing a domain's loss, are left out and listed."""
    table, failed = [], []
    for run_id, row in rows.items():
        losses = row.get("eval_loss") or {}
        if row.get("status") != "ok" or any(d not in losses for d in checked.domains):
            failed.append({"id": run_id, "reason": row.get("reason", "no validation loss")[:200]})
            continue
        trained = row.get("train_tokens") or {}
        total = sum(float(trained.get(d, 0)) for d in checked.domains)
        table.append({"id": run_id,
                      "weights": [float(trained.get(d, 0)) / total for d in checked.domains],
                      "objective": math.fsum(float(losses[d]) for d in checked.domains) / len(checked.domains)})
    if failed:
        logger.warning("regmix: %d proxy run(s) failed and are left out of the fit: %s",
                       len(failed), ", ".join(f["id"] for f in failed))
    return table, failed


def _regmix_report(checked: CheckedMix, table, failed, model, optimum) -> dict:
    best = min(table, key=lambda entry: entry["objective"])
    return {
        "schema": "autoscale.regmix_report/v1",
        "domains": checked.domains,
        "objective": "mean final validation loss over the domains (eval_loss)",
        "ok_runs": len(table), "failed_runs": len(failed), "failed": failed,
        "runs": [{"id": e["id"], "weights": dict(zip(checked.domains, e["weights"])),
                  "objective": e["objective"]} for e in table],
        "regressor": {"kind": model.kind, "details": _plain(model.details)},
        "held_out": model.held_out,
        "best_run": {"id": best["id"], "objective": best["objective"]},
        "optimum": {"weights": optimum.weights, "predicted": optimum.predicted,
                    "top_k_predicted": optimum.top_k_predicted,
                    "candidates": optimum.candidates, "top_k": optimum.top_k},
        "max_weight": checked.caps,
    }


def _plain(value: Any) -> Any:
    """JSON-ready copy (LightGBM's parameters hold only plain values, numpy floats aside)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _run_doremi(config: MixConfig, checked: CheckedMix, executor) -> MixResult:
    from .runs_store import existing_result

    reference, proxy = checked.runs
    trained: List[str] = []
    for run in (reference, proxy):  # the proxy reads the reference's final checkpoint
        store, now = _train_missing(config, checked.runs, executor, [run])
        trained += now
        row = store.rows_for([run.key])
        if not row or row[0].get("status") != "ok":
            reason = row[0].get("reason", "") if row else "no result"
            raise RunsFailed(f"doremi: the {run.run_id} run failed ({reason[:300]}); see "
                             f"{run.output_dir}/train.log")
    result = existing_result(proxy)
    entry = (result or {}).get("doremi")
    if not isinstance(entry, dict) or "average_weights" not in entry:
        raise RunsFailed(f"doremi: {proxy.output_dir}/result.json holds no DoReMi weights; "
                         "delete that run's directory and rerun")
    rows = {r.run_id: store.rows_for([r.key])[0] for r in checked.runs}
    tokens_trained = sum(_tokens_trained(rows[r.run_id], r) for r in checked.runs)
    trajectory = proxy.output_dir / entry.get("trajectory", "doremi_weights.jsonl")
    plot = _doremi_plot(trajectory, Path(config.output_dir) / DOREMI_PLOT)
    weights = {d: float(entry["average_weights"][d]) for d in checked.domains}
    specifics = {"proxy_tokens_trained": tokens_trained, "proxy_runs": 2, "doremi": {
        "average_weights": weights, "final_weights": entry.get("final_weights"),
        "steps": entry.get("steps"), "base_weights": _base_weights(reference),
        "trajectory": str(trajectory.relative_to(Path(config.output_dir).resolve())),
        "reference_run": reference.run_id, "proxy_run": proxy.run_id}}
    mixture = _write_mixture(config, checked, weights, specifics)
    return MixResult(mixture, Path(config.out), 2, tokens_trained, trained, plot_path=plot)


def _base_weights(run) -> Dict[str, float]:
    tokens = run.config.tokens_per_domain
    total = sum(tokens.values())
    return {d: n / total for d, n in tokens.items()}


def _doremi_plot(trajectory: Path, path: Path) -> Optional[Path]:
    try:
        from ..method.plots import plot_doremi_trajectory
    except ImportError:
        logger.warning("no DoReMi trajectory plot in this version; skipped")
        return None
    return plot_doremi_trajectory(trajectory, path)


_RUNNERS = {"regmix": _run_regmix, "doremi": _run_doremi}


# ----------------------------------------------------------------------------- outputs


def _write_mixture(config: MixConfig, checked: CheckedMix, weights: Dict[str, float],
                   specifics: dict) -> Mixture:
    """The mixture file: the method's exact weights, whole tokens summing to the target."""
    from ..method.ddo import integer_tokens

    domains = checked.domains
    tokens = integer_tokens([weights[d] * checked.target_tokens for d in domains],
                            checked.target_tokens)
    provenance = {
        "settings": method_settings(config),
        "manifest": {"path": str(config.manifest), "sha256": file_sha256(checked.manifest_path)},
        "domain_train_tokens": checked.available_tokens,
        "proxy_tokens_trained": 0, "proxy_runs": 0, **specifics,
    }
    mixture = Mixture(checked.target_tokens, {d: float(weights[d]) for d in domains},
                      dict(zip(domains, tokens)), config.method, provenance)
    save_mixture(config.out, mixture)
    logger.info("mix %s: wrote %s", config.method, config.out)
    return mixture


def method_settings(config: MixConfig) -> dict:
    """The settings that determine the answer (not where or how runs execute)."""
    settings: Dict[str, Any] = {"method": config.method, "domains": config.domains,
                                "target_tokens": config.target_tokens}
    if config.method == "temperature":
        settings["tau"] = config.tau_used
    if config.method == "unimax":
        settings["max_epochs"] = float(config.max_epochs) if config.max_epochs is not None \
            else DEFAULT_UNIMAX_EPOCHS
    if config.method in ("doremi", "regmix"):
        settings[config.method] = dict(getattr(config, config.method))
        settings["train"] = dict(config.train)
    return settings


def _write_summary(config: MixConfig, result: MixResult) -> Path:
    path = Path(config.output_dir) / SUMMARY_FILE
    atomic_write_json(path, {
        "schema": SUMMARY_SCHEMA, "method": config.method, "mixture": str(config.out),
        "target_tokens": result.mixture.total_tokens, "weights": result.mixture.weights,
        "proxy_runs": result.proxy_runs, "proxy_tokens_trained": result.proxy_tokens_trained,
        "failed_runs": result.failed,
        "report": REGMIX_REPORT if result.report_path else None,
        "plot": DOREMI_PLOT if result.plot_path else None,
    })
    return path
