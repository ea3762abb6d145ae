"""The two public file formats: ``autoscale.runs/v1`` and ``autoscale.mixture/v1``.

Both are plain JSON so results from any training stack can be written by hand. Loading
validates everything and raises :class:`InputError` naming the file, the run or domain,
and what is wrong; nothing deeper in the package ever sees an unchecked value.
Extra keys are kept (forward compatible) but never interpreted.
"""

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from .. import loaders
from ..atomic import atomic_write_json
from ..errors import InputError

RUNS_SCHEMA = "autoscale.runs/v1"
MIXTURE_SCHEMA = "autoscale.mixture/v1"
METRICS = ("perplexity", "loss")
RUN_STATUSES = ("ok", "failed")
WEIGHT_SUM_TOLERANCE = 1e-6

PathLike = Union[str, os.PathLike]


@dataclass
class Run:
    """One training run: tokens seen per domain and the validation metric per eval domain."""

    id: str
    train_tokens: Dict[str, float]
    eval: Dict[str, float]
    status: str = "ok"
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def eval_fingerprint(self) -> Optional[str]:
        """Fingerprint of the eval set this run was measured on, when the row records one."""
        return row_eval_fingerprint(self.extra)

    def to_dict(self) -> dict:
        row = {"id": self.id, "train_tokens": dict(self.train_tokens), "eval": dict(self.eval),
               "status": self.status}
        row.update(self.extra)
        return row


@dataclass
class RunsFile:
    metric: str
    runs: List[Run]
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        payload = {"schema": RUNS_SCHEMA, "metric": self.metric,
                   "runs": [run.to_dict() for run in self.runs]}
        payload.update(self.extra)
        return payload


@dataclass
class Mixture:
    """Token quantities per domain for one training budget, and where they came from."""

    total_tokens: float
    weights: Dict[str, float]
    tokens: Dict[str, float]
    method: str
    provenance: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, float], method: str,
                    provenance: Optional[dict] = None) -> "Mixture":
        total = float(sum(tokens.values()))
        if not total > 0:
            raise InputError("a mixture needs a positive total number of tokens")
        weights = {domain: float(n) / total for domain, n in tokens.items()}
        return cls(total, weights, {d: float(n) for d, n in tokens.items()}, method,
                   dict(provenance or {}))

    def to_dict(self) -> dict:
        return {"schema": MIXTURE_SCHEMA, "total_tokens": self.total_tokens,
                "weights": dict(self.weights), "tokens": dict(self.tokens),
                "method": self.method, "provenance": self.provenance}


# ---------------------------------------------------------------------------- reading


def read_json(path: PathLike, what: str) -> Any:
    """Parse a JSON file strictly (no duplicate keys, no NaN), turning every I/O or syntax
    problem into a one-line InputError that names the file."""
    return loaders.read_json(path, what)


def load_runs(path: PathLike) -> RunsFile:
    return runs_from_dict(read_json(path, "runs file"), source=str(path))


def load_mixture(path: PathLike) -> Mixture:
    return mixture_from_dict(read_json(path, "mixture file"), source=str(path))


def save_runs(path: PathLike, runs_file: RunsFile) -> None:
    atomic_write_json(path, runs_file.to_dict())


def save_mixture(path: PathLike, mixture: Mixture) -> None:
    check_mixture(mixture, source=str(path))
    atomic_write_json(path, mixture.to_dict())


# ------------------------------------------------------------------------- validation


def runs_from_dict(payload: Any, source: str = "<runs>") -> RunsFile:
    where = f"runs file {source}"
    obj = _expect_mapping(payload, where)
    _expect_schema(obj, RUNS_SCHEMA, where)
    metric = obj.get("metric")
    if metric not in METRICS:
        raise InputError(f"{where}: 'metric' must be one of {list(METRICS)}, got {metric!r}")
    raw_runs = obj.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        raise InputError(f"{where}: 'runs' must be a non-empty list of runs")
    runs = [_run_from_dict(raw, index, metric, where) for index, raw in enumerate(raw_runs)]
    _check_unique_ids(runs, where)
    _check_consistent_domains(runs, where)
    extra = {k: v for k, v in obj.items() if k not in ("schema", "metric", "runs")}
    return RunsFile(metric, runs, extra)


def _run_from_dict(raw: Any, index: int, metric: str, where: str) -> Run:
    obj = _expect_mapping(raw, f"{where}: run #{index}")
    run_id = obj.get("id")
    if not isinstance(run_id, str) or not run_id:
        raise InputError(f"{where}: run #{index} needs a non-empty string 'id'")
    here = f"{where}: run {run_id!r}"
    status = obj.get("status", "ok")
    if status not in RUN_STATUSES:
        raise InputError(f"{here}: 'status' must be one of {list(RUN_STATUSES)}, got {status!r}")
    tokens = _number_map(obj.get("train_tokens"), f"{here}: train_tokens", minimum=0.0)
    if not tokens:
        raise InputError(f"{here}: 'train_tokens' must name at least one domain")
    if status == "ok":
        evals = _number_map(obj.get("eval"), f"{here}: eval", minimum=_eval_minimum(metric))
        if not evals:
            raise InputError(f"{here}: a run with status 'ok' needs at least one 'eval' value")
        if obj.get("eval_set") is not None:  # null: no record, as if absent
            _check_eval_set(obj["eval_set"], f"{here}: eval_set")
    else:
        evals = {}  # a failed run's partial metrics are never used
    extra = {k: v for k, v in obj.items() if k not in ("id", "train_tokens", "eval", "status")}
    if status == "failed" and "eval" in obj:
        extra["eval_partial"] = obj["eval"]
    return Run(run_id, tokens, evals, status, extra)


def _check_eval_set(value: Any, where: str) -> None:
    # Optional (hand-written rows lack it), but when present DDO compares fingerprints.
    obj = _expect_mapping(value, where)
    fingerprint = obj.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise InputError(f"{where}: 'fingerprint' must be a non-empty string (the sha256 of the "
                         f"eval tokens), got {fingerprint!r}")
    if "tokens" in obj:
        _number_map(obj["tokens"], f"{where}: tokens", minimum=0.0)


def _eval_minimum(metric: str) -> float:
    # Perplexity is exp(mean token loss) >= 1 in theory; accept any positive value.
    return 0.0 if metric == "loss" else 1e-300


def _check_unique_ids(runs: List[Run], where: str) -> None:
    seen = set()
    for run in runs:
        if run.id in seen:
            raise InputError(f"{where}: run id {run.id!r} appears more than once")
        seen.add(run.id)


def _check_consistent_domains(runs: List[Run], where: str) -> None:
    ok_runs = [run for run in runs if run.ok]
    if not ok_runs:
        return
    reference = ok_runs[0]
    for run in ok_runs[1:]:
        _same_keys(reference.train_tokens, run.train_tokens, "training domain", run, reference, where)
        _same_keys(reference.eval, run.eval, "eval domain", run, reference, where)


def _same_keys(expected: dict, actual: dict, kind: str, run: Run, reference: Run, where: str):
    missing = [k for k in expected if k not in actual]
    unknown = [k for k in actual if k not in expected]
    if missing:
        raise InputError(f"{where}: run {run.id!r} lacks {kind} {missing[0]!r} "
                         f"that run {reference.id!r} has (use 0 tokens explicitly if intended)")
    if unknown:
        raise InputError(f"{where}: run {run.id!r} has unknown {kind} {unknown[0]!r}; "
                         f"run {reference.id!r} has {sorted(expected)}")


def mixture_from_dict(payload: Any, source: str = "<mixture>") -> Mixture:
    where = f"mixture file {source}"
    obj = _expect_mapping(payload, where)
    _expect_schema(obj, MIXTURE_SCHEMA, where)
    total = _number(obj.get("total_tokens"), f"{where}: total_tokens", minimum=0.0)
    if total <= 0:
        raise InputError(f"{where}: 'total_tokens' must be positive, got {total}")
    weights = _number_map(obj.get("weights"), f"{where}: weights", minimum=0.0)
    tokens = _number_map(obj.get("tokens"), f"{where}: tokens", minimum=0.0)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise InputError(f"{where}: 'method' must be a non-empty string")
    provenance = obj.get("provenance", {})
    if not isinstance(provenance, dict):
        raise InputError(f"{where}: 'provenance' must be an object")
    mixture = Mixture(total, weights, tokens, method, provenance)
    check_mixture(mixture, source)
    return mixture


def check_mixture(mixture: Mixture, source: str = "<mixture>") -> None:
    """Cross-field checks shared by loading and saving."""
    where = f"mixture file {source}"
    if not mixture.weights:
        raise InputError(f"{where}: 'weights' must name at least one domain")
    if set(mixture.weights) != set(mixture.tokens):
        odd = sorted(set(mixture.weights) ^ set(mixture.tokens))
        raise InputError(f"{where}: 'weights' and 'tokens' must name the same domains; differs on {odd}")
    weight_sum = math.fsum(mixture.weights.values())
    if abs(weight_sum - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise InputError(f"{where}: weights sum to {weight_sum!r}, not 1")
    token_sum = math.fsum(mixture.tokens.values())
    rounding_slack = len(mixture.tokens) + WEIGHT_SUM_TOLERANCE * mixture.total_tokens
    if abs(token_sum - mixture.total_tokens) > rounding_slack:
        raise InputError(f"{where}: tokens sum to {token_sum:,.0f}, but total_tokens is "
                         f"{mixture.total_tokens:,.0f}")
    for domain, weight in mixture.weights.items():
        implied = mixture.tokens[domain] / mixture.total_tokens
        if abs(implied - weight) > WEIGHT_SUM_TOLERANCE + 1.0 / mixture.total_tokens:
            raise InputError(f"{where}: domain {domain!r} has weight {weight!r} but "
                             f"tokens/total_tokens = {implied!r}")


# ---------------------------------------------------------------------------- helpers


def _expect_mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _expect_schema(obj: dict, schema: str, where: str) -> None:
    found = obj.get("schema")
    if found != schema:
        raise InputError(f"{where}: unknown schema {found!r}; this tool reads {schema!r}")


def _number(value: Any, where: str, minimum: float) -> float:
    # bool is an int in Python; true/false are never token counts or metrics.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise InputError(f"{where}: number too large: {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{where}: expected a finite number, got {value!r}")
    if number < minimum:
        raise InputError(f"{where}: must be >= {minimum:g}, got {value!r}")
    return number


def _number_map(value: Any, where: str, minimum: float) -> Dict[str, float]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected an object mapping domain names to numbers")
    result = {}
    for key, number in value.items():
        if not key:
            raise InputError(f"{where}: domain names must be non-empty")
        result[key] = _number(number, f"{where}[{key!r}]", minimum)
    return result


def row_eval_fingerprint(row) -> Optional[str]:
    """The eval-set fingerprint a runs-file row records, or None."""
    eval_set = row.get("eval_set")
    fingerprint = eval_set.get("fingerprint") if isinstance(eval_set, dict) else None
    return fingerprint if isinstance(fingerprint, str) and fingerprint else None


def group_by_eval_set(named_fingerprints) -> Dict[Optional[str], List[str]]:
    """``{fingerprint or None: [names]}`` from ``(name, fingerprint)`` pairs, in first-seen
    order: one group means every run was measured on one eval set (or none records one)."""
    groups: Dict[Optional[str], List[str]] = {}
    for name, fingerprint in named_fingerprints:
        groups.setdefault(fingerprint, []).append(name)
    return groups
