"""The sweep's runs file: one row per finished proxy run, rewritten atomically.

Rows are kept in plan order whatever order runs finish in, and hold only what the run
computed (tokens, metrics, status, reason), not when or how fast: the file's bytes depend
on the results alone. Per-run details (timings, step losses) stay in each run's result.json.
"""

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..atomic import atomic_write_json
from ..errors import InputError
from ..formats.schemas import RUNS_SCHEMA, runs_from_dict

logger = logging.getLogger(__name__)

# eval_set is kept so DDO can refuse to combine runs measured on different eval sets.
ROW_FIELDS = ("id", "key", "train_tokens", "eval", "eval_set", "eval_halves", "status",
              "reason", "failure_kind", "eval_loss", "steps", "seed")


def canonical_row(row: dict, key: str) -> dict:
    picked = {name: row[name] for name in ROW_FIELDS if name in row}
    picked["key"] = key
    return picked


class RunsStore:
    def __init__(self, path, plan_ids: Sequence[str]):
        self.path = Path(path)
        self.plan_ids = list(plan_ids)
        self.rows: Dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
            runs_from_dict(payload, source=str(self.path))  # full validation
        except (ValueError, InputError) as exc:
            raise InputError(f"sweep runs file {self.path} is damaged ({exc}); move it away to "
                             "rerun the sweep") from None
        for row in payload["runs"]:
            self.rows[row.get("key", "")] = row

    def done(self, key: str, retry_failed: bool = False) -> bool:
        """Finished for good: ok, or a training failure (NaN, divergence) that a rerun would
        repeat. Crashed or killed runs are tried again; ``retry_failed`` retries all."""
        row = self.rows.get(key)
        if row is None:
            return False
        if row["status"] == "ok":
            return True
        return row.get("failure_kind") in ("training", "input") and not retry_failed

    def record(self, run_id: str, key: str, row: dict) -> None:
        self.rows[key] = canonical_row(row, key)
        self._write()

    def _write(self) -> None:
        order = {run_id: index for index, run_id in enumerate(self.plan_ids)}
        rows = sorted(self.rows.values(), key=lambda r: (order.get(r["id"], len(order)), r["id"]))
        atomic_write_json(self.path, {"schema": RUNS_SCHEMA, "metric": "perplexity", "runs": rows})

    def rows_for(self, keys: Sequence[str]) -> List[dict]:
        return [self.rows[k] for k in keys if k in self.rows]

    def failed(self) -> List[dict]:
        return [r for r in self.rows.values() if r["status"] != "ok"]


def failure_row(run_id: str, planned_tokens: Dict[str, float], reason: str,
                seed: Optional[int] = None, kind: str = "crash") -> dict:
    """What we record for a run that produced no result of its own: ``kind`` "crash"
    (killed, died: retried on restart) or "input" (its config cannot run: not retried)."""
    row = {"id": run_id, "train_tokens": dict(planned_tokens), "eval": {}, "status": "failed",
           "reason": reason, "failure_kind": kind}
    if seed is not None:
        row["seed"] = seed
    return row


def existing_result(run) -> Optional[dict]:
    """The row a proxy run (:class:`~autoscale_ds.orchestrate.sweep.ProxyRun`) wrote to its
    own ``result.json``, if it finished under exactly this config; else None. A run that
    ended while no orchestrator watched is recorded from it, not trained again."""
    path = run.output_dir / "result.json"
    try:
        row = json.loads(path.read_text(encoding="utf-8"))["runs"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return row if row.get("config_fingerprint") == run.key else None
