"""The DeepSpeed training loop behind `launchers/train.py`.

One run: budget per domain -> whole samples -> a blended, rank-sharded stream -> a proxy
model in a DeepSpeed engine -> warmup + cosine / wsd / constant schedule -> per-domain loss
tracking -> periodic eval and checkpoints -> one row of ``autoscale.runs/v1`` in ``result.json``.
A NaN/inf or diverging loss ends the run as ``status: failed`` with the reason. A WSD branch
(``branch_from``) starts from its parent's checkpoint instead of step 0 (see ``branch.py``). A
DoReMi proxy (``doremi``) re-weights its stream every step against a reference model (see
``doremi.py``).
"""

import json
import logging
import math
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..atomic import atomic_write_json
from ..formats.manifest import load_manifest
from ..data.indexed import open_domain_store
from ..data.samples import DomainSamples
from ..errors import InputError
from ..formats.schemas import RUNS_SCHEMA, load_mixture
from .branch import (BranchPoint, check_branch, checkpoint_tag, in_parent_order, lineage_fingerprint,
                     parent_tag_dir, read_branch_point, resolve_branch_point, write_branch_point)
from .config import TrainConfig
from .distributed import barrier, ensure_launcher_env, is_main_process, rank, world_size
from .domain_loss import per_domain_cross_entropy, reduce_across_ranks
from .doremi import DoReMiRun, DoReMiStream
from .evaluate import build_eval_set, evaluate
from .models import build_model, causal_batch, count_parameters, masked_batch
from .plan import BatchTriple, LRSchedule, SamplePlan, derive_batch_triple, plan_samples, plan_schedule
from .stream import TrainStream

logger = logging.getLogger(__name__)

_LOSS_EMA_DECAY = 0.9
_CHECKPOINTS_KEPT = 2


class RunFailed(Exception):
    """The run itself failed (NaN, divergence): recorded as a result, not a crash."""


class CheckpointUnreadable(InputError):
    """Every saved checkpoint of the run is damaged. Unlike other input errors, deleting them
    fixes it, so a sweep records it as a crash (retried on restart), not as bad input."""


@dataclass
class RunState:
    """Everything besides the engine that a checkpoint must restore."""

    step: int = 0
    loss_ema: Optional[float] = None
    best_loss_ema: Optional[float] = None
    step_losses: List[float] = field(default_factory=list)
    domain_loss_sums: List[float] = field(default_factory=list)
    domain_token_counts: List[float] = field(default_factory=list)
    evals: List[dict] = field(default_factory=list)


def resolve_budget(config: TrainConfig) -> Dict[str, float]:
    if config.tokens_per_domain:
        return dict(config.tokens_per_domain)
    mixture = load_mixture(config.mixture)
    total = config.total_tokens or mixture.total_tokens
    return {domain: weight * total for domain, weight in mixture.weights.items()}


def build_ds_config(config: TrainConfig, triple: BatchTriple, on_gpu: bool) -> dict:
    """The DeepSpeed config: the user's ZeRO settings + what must agree with the run config.

    Keys of ``ds_config`` that the run config decides are replaced, and one warning lists
    each one whose value changes (ds_configs/README.md promises it)."""
    user = json.loads(Path(config.ds_config).read_text()) if config.ds_config else {}
    ds = json.loads(json.dumps(user))  # a deep copy: `user` stays as written, for the warning
    zero = ds.setdefault("zero_optimization", {})
    if config.zero_stage is not None or not config.ds_config:
        zero["stage"] = config.zero_stage or 0
    ds.update({
        "train_micro_batch_size_per_gpu": triple.micro_batch_size,
        "gradient_accumulation_steps": triple.accumulation_steps,
        "train_batch_size": triple.global_batch_size,
        "gradient_clipping": config.gradient_clipping,
        "steps_per_print": ds.get("steps_per_print", 10**9),
        # A torch optimizer: DeepSpeed's fused Adam needs a ~150 s JIT build on CPU.
        "optimizer": {"type": "AdamW", "params": {"lr": config.learning_rate, "torch_adam": True,
                      "weight_decay": config.weight_decay, "betas": [0.9, 0.95], "eps": 1e-8}},
    })
    ds.pop("scheduler", None)  # the schedule is the run config's warmup + cosine, set in code
    for name, settings in {**_precision(config, on_gpu), **_monitors(config)}.items():
        ds[name] = {**(ds.get(name) or {}), **settings}  # keep the user's other sub-keys
    overridden = overridden_keys(user, ds)
    if overridden:
        logger.warning("ds_config %s: the run config decides %s; replaced", config.ds_config,
                       ", ".join(overridden))
    return ds


# What the run config decides, as dotted paths into a DeepSpeed config.
_DECIDED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                 "optimizer", "scheduler", "gradient_clipping", "zero_optimization.stage",
                 "bf16.enabled", "fp16.enabled", "csv_monitor.enabled", "csv_monitor.output_path",
                 "csv_monitor.job_name", "tensorboard.enabled", "tensorboard.output_path",
                 "tensorboard.job_name")
_MISSING = object()


def overridden_keys(user: dict, final: dict) -> List[str]:
    """Each decided key the user's ds_config sets to something other than what is used,
    as ``key (user value -> used value)``."""
    changed = []
    for key in _DECIDED_KEYS:
        wanted, used = _lookup(user, key), _lookup(final, key)
        if wanted is not _MISSING and wanted != used:
            changed.append(f"{key} ({_short(wanted)} -> {_short(used)})")
    return changed


def _short(value) -> str:
    if value is _MISSING:
        return "removed"
    return "{...}" if isinstance(value, dict) else json.dumps(value)


def _lookup(settings: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(settings, dict) or part not in settings:
            return _MISSING
        settings = settings[part]
    return settings


def _precision(config: TrainConfig, on_gpu: bool) -> dict:
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    if precision != "fp32" and not on_gpu:
        raise InputError(f"precision {precision} needs a GPU; use fp32 (or auto) on CPU")
    return {"bf16": {"enabled": precision == "bf16"}, "fp16": {"enabled": precision == "fp16"}}


def _monitors(config: TrainConfig) -> dict:
    path = str(Path(config.output_dir) / "monitor")
    return {"csv_monitor": {"enabled": "csv" in config.monitor, "output_path": path,
                            "job_name": config.run_id},
            "tensorboard": {"enabled": "tensorboard" in config.monitor, "output_path": path,
                            "job_name": config.run_id}}


class Trainer:
    def __init__(self, config: TrainConfig):
        ensure_launcher_env()
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.manifest = load_manifest(config.manifest)
        budget = resolve_budget(config)
        unknown = [d for d in budget if d not in self.manifest.domains]
        if unknown:
            raise InputError(f"budget names domain(s) {unknown} that the manifest "
                             f"{config.manifest} does not have ({sorted(self.manifest.domains)})")
        self.triple = derive_batch_triple(config.global_batch_size, config.micro_batch_size, world_size())
        self._plan_run(budget)
        self.vocab_size = int(self.manifest.tokenizer["vocab_size"])
        self.sources = [DomainSamples(self._open_store(d, "train"), config.seq_len, config.seed,
                                      d, config.max_epochs) for d in self.plan.domains]
        for domain in self.plan.domains:  # the eval set reads these; fail now, not mid-run
            self._open_store(domain, "valid").close()
        self.eval_seconds = 0.0
        self.eval_set_entry: Optional[dict] = None
        weights = self.branch_point.stream_weights() if self.branch_point else None
        self.stream = TrainStream(self.sources, self.plan, self.triple, rank(), weights) \
            if not config.doremi else DoReMiStream(self.sources, self.plan, self.triple, rank())
        self.doremi = DoReMiRun(config.doremi, self.plan, self.stream, self.output_dir) \
            if config.doremi else None
        # A branch reads its parent's stream, so its per-domain counts are the stream's.
        samples = {d: t // config.seq_len for d, t in
                   self.stream.tokens_consumed(self.plan.total_steps).items()} \
            if self.branch_point else self.plan.samples_per_domain
        self.epochs = {s.name: s.plan(samples[s.name]).epochs for s in self.sources}
        self.state = RunState(domain_loss_sums=[0.0] * len(self.plan.domains),
                              domain_token_counts=[0.0] * len(self.plan.domains))
        self.engine = None

    # ------------------------------------------------------------------ set-up

    def _plan_run(self, budget: Dict[str, float]) -> None:
        """Samples, steps and learning rates; a branch's checked against its parent."""
        config = self.config
        self.branch_point: Optional[BranchPoint] = None
        check_parent = False
        if config.branch_from:
            self.branch_point, check_parent = resolve_branch_point(config, self._checkpoint_dir())
            budget = in_parent_order(budget, self.branch_point, parent_tag_dir(config))
        self.budget = budget
        self.plan: SamplePlan = plan_samples(budget, config.seq_len, config.global_batch_size)
        self.schedule: LRSchedule = plan_schedule(
            config.lr_schedule, self.plan.total_steps, config.learning_rate,
            config.learning_rate * config.min_lr_ratio, config.warmup_fraction,
            config.warmup_steps, config.decay_fraction, config.decay_shape)
        if check_parent:
            check_branch(self.branch_point, config, self.schedule)
        beyond = [s for s in config.keep_checkpoints_at_steps if s > self.plan.total_steps]
        if beyond:
            raise InputError(f"keep_checkpoints_at_steps {beyond} lie beyond the run's "
                             f"{self.plan.total_steps} optimizer steps")

    def _open_store(self, domain: str, split: str):
        """A domain's token store, refused if any id falls outside the model's vocabulary
        (a store made with another tokenizer would die mid-run in the embedding lookup)."""
        store = open_domain_store(self.manifest, domain, split)
        low, high = store.token_id_range()
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            store.close()
            widen = (f", or set tokenizer.vocab_size to at least {high + 1:,} if that "
                     "tokenizer is the one you mean") if low >= 0 else ""
            raise InputError(
                f"{store.bin_path} (domain {domain!r}, {split}) holds token id {bad:,}, outside "
                f"the model's vocab_size {self.vocab_size:,} (tokenizer.vocab_size in the manifest "
                f"{self.config.manifest}); it was tokenized with another tokenizer: rebuild it "
                f"with `autoscale prepare`{widen}")
        return store


    def _build_engine(self):
        import deepspeed

        on_gpu = torch.cuda.is_available()
        torch.manual_seed(self.config.seed)  # same initial weights for every run of a sweep
        model = build_model(self.config.model_family, self.config.model_size, self.vocab_size,
                            self.config.seq_len, self.config.dropout)
        if is_main_process():
            logger.info("model %s-%s: %s parameters", self.config.model_family,
                        self.config.model_size, f"{count_parameters(model):,}")
        lrs = self.schedule

        def schedule(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lrs.at(step) / lrs.peak_lr)

        engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), lr_scheduler=schedule,
            config=build_ds_config(self.config, self.triple, on_gpu))
        self.engine = engine
        self.warmup_steps = lrs.warmup_steps
        if self.doremi:
            self.doremi.load_reference(self.config.model_family, self.config.model_size,
                                       self.vocab_size, self.config.seq_len, engine.device)

    def _checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def _resume(self) -> None:
        """Load the newest readable checkpoint. A damaged one (e.g. the disk filled while it
        was written) falls back to the one before it, which is still on disk."""
        directory = self._checkpoint_dir()
        latest = directory / "latest"
        if not latest.exists():
            if self.config.branch_from:
                self._start_branch()
            return
        failures = []
        for tag in _checkpoint_tags(directory, latest):
            failure = self._load_checkpoint(directory, tag)
            if failure is None:
                if is_main_process() and read_branch_point(directory / tag) is None:
                    # killed between the checkpoint and its record: a branch may need it
                    write_branch_point(directory / tag, self._branch_point())
                return
            failures.append(failure)
        raise CheckpointUnreadable(f"no readable checkpoint in {directory}: {'; '.join(failures)}; "
                                   f"delete {directory} to train this run from the start")

    def _load_checkpoint(self, directory: Path, tag: str) -> Optional[str]:
        """Restore from one tag; None when it worked, else what is wrong with it."""
        try:
            path, client = self.engine.load_checkpoint(str(directory), tag=tag)
        except Exception as exc:  # torch's zip/pickle errors have no common base class
            where = ", ".join(map(str, _damaged_files(directory / tag))) or str(directory / tag)
            logger.warning("checkpoint %s is unreadable (%s: %s); trying the one before it",
                           directory / tag, where, _first_line(exc))
            return f"{where}: {_first_line(exc)}"
        if path is None:
            return f"{directory / tag}: missing"
        self._restore(client)
        return None

    def _restore(self, client) -> None:
        if client is None or client.get("fingerprint") != self.config.fingerprint():
            raise InputError(f"checkpoint in {self._checkpoint_dir()} belongs to a different run "
                             "config; use a new output_dir or delete the checkpoints")
        self._restore_state(client)
        logger.info("resumed from step %d", self.state.step)

    def _restore_state(self, client) -> None:
        self.state = RunState(**client["run_state"])
        torch.set_rng_state(client["torch_rng"])
        if self.doremi:
            self.doremi.load_state_dict(client.get("doremi"))

    def _start_branch(self) -> None:
        """Model, optimizer, RNG and run state of the parent at the branch point (its
        directory is only read), then this run's learning rate for that step."""
        step, tag_dir = self.config.branch_from["step"], parent_tag_dir(self.config)
        try:
            path, client = self.engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        except Exception as exc:  # torch's zip/pickle errors have no common base class
            raise InputError(f"branch_from: the parent checkpoint {tag_dir} is unreadable "
                             f"({_first_line(exc)}); rerun the parent run") from None
        if path is None or client is None or client.get("lineage") != lineage_fingerprint(self.config):
            raise InputError(f"branch_from: {tag_dir} is not a checkpoint of this branch's "
                             "parent (missing, or another run config); rerun the parent run")
        self._restore_state(client)
        if self.state.step != step:
            raise InputError(f"branch_from: {tag_dir} holds step {self.state.step}, not {step}")
        # The checkpoint's optimizer carries the parent's rate for this step; from here on
        # the rates are this run's (they differ when the branch decays from its first step).
        scheduler = self.engine.lr_scheduler
        for group in scheduler.optimizer.param_groups:
            group["lr"] = self.schedule.at(step)
        logger.info("branched from %s at step %d", tag_dir, step)

    def _branch_point(self) -> BranchPoint:
        """This run's record next to its checkpoint at the current step."""
        stream = self.branch_point.stream_samples if self.branch_point else self.plan.samples_per_domain
        return BranchPoint(self.state.step, lineage_fingerprint(self.config), dict(stream),
                           dict(self.budget), vars(self.schedule).copy())

    def _save_checkpoint(self) -> None:
        tag = checkpoint_tag(self.state.step)
        client = {"fingerprint": self.config.fingerprint(), "lineage": lineage_fingerprint(self.config),
                  "run_state": vars(self.state).copy(), "torch_rng": torch.get_rng_state()}
        if self.doremi:
            client["doremi"] = self.doremi.state_dict()
        self.engine.save_checkpoint(str(self._checkpoint_dir()), tag=tag, client_state=client)
        barrier()
        if is_main_process():
            if self.doremi:
                self.doremi.commit()
            write_branch_point(self._checkpoint_dir() / tag, self._branch_point())
            self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        """Keep the newest few, and every branch point asked for."""
        kept = {checkpoint_tag(s) for s in self.config.keep_checkpoints_at_steps}
        tags = sorted(p for p in self._checkpoint_dir().glob("step_*") if p.is_dir() and p.name not in kept)
        for old in tags[:-_CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ training

    def _micro_step(self, step: int, accumulation_index: int):
        tokens, domain_ids, sample_ids = self.stream.micro_batch(step, accumulation_index)
        if self.config.model_family == "bert":
            inputs, labels = masked_batch(tokens, sample_ids, self.vocab_size, self.config.seed)
        else:
            inputs, labels = causal_batch(tokens)
        device = self.engine.device
        logits = self.engine(input_ids=inputs.to(device)).logits
        result = per_domain_cross_entropy(logits, labels.to(device), domain_ids.to(device), len(self.plan.domains))
        if self.doremi:
            self.doremi.add_micro_batch(inputs.to(device), logits, labels.to(device), domain_ids.to(device))
        self.engine.backward(result.loss)
        self.engine.step()
        return result

    def _train_step(self) -> float:
        sums = torch.zeros(len(self.plan.domains), dtype=torch.float64)
        counts = torch.zeros_like(sums)
        for accumulation_index in range(self.triple.accumulation_steps):
            result = reduce_across_ranks(self._micro_step(self.state.step, accumulation_index))
            sums += result.loss_sum_per_domain.double().cpu()
            counts += result.tokens_per_domain.double().cpu()
        step_loss = float(sums.sum() / counts.sum().clamp_min(1))
        for i in range(len(sums)):
            self.state.domain_loss_sums[i] += float(sums[i])
            self.state.domain_token_counts[i] += float(counts[i])
        self._monitor_step(step_loss, sums, counts)
        return step_loss

    def _check_health(self, step_loss: float) -> None:
        state = self.state
        if not math.isfinite(step_loss):
            raise RunFailed(f"loss became {step_loss} at step {state.step}")
        state.loss_ema = step_loss if state.loss_ema is None else \
            _LOSS_EMA_DECAY * state.loss_ema + (1 - _LOSS_EMA_DECAY) * step_loss
        state.best_loss_ema = min(state.best_loss_ema or math.inf, state.loss_ema)
        if state.step >= self.warmup_steps and \
                state.loss_ema > self.config.divergence_factor * state.best_loss_ema:
            raise RunFailed(f"diverged at step {state.step}: smoothed loss {state.loss_ema:.4g} is "
                            f"over {self.config.divergence_factor:g}x the best {state.best_loss_ema:.4g}")

    def _monitor_step(self, step_loss: float, sums, counts) -> None:
        monitor = getattr(self.engine, "monitor", None)
        if monitor is None or not monitor.enabled:
            return
        step = self.state.step + 1
        events = [("Train/loss", step_loss, step), ("Train/lr", self.engine.get_lr()[0], step)]
        events += [(f"Train/loss/{d}", float(sums[i] / counts[i]), step)
                   for i, d in enumerate(self.plan.domains) if counts[i] > 0]
        monitor.write_events(events)

    def _evaluate(self, eval_set) -> dict:
        started = time.time()
        batch_size = self.config.eval_batch_size or 4 * self.config.micro_batch_size
        result = evaluate(self.engine.module, eval_set, batch_size, rank(),
                          world_size(), self.config.model_family, self.vocab_size,
                          self.config.seed, per_domain_cross_entropy)
        result["step"] = self.state.step
        self.state.evals.append(result)
        self.eval_seconds += time.time() - started
        monitor = getattr(self.engine, "monitor", None)
        if monitor is not None and monitor.enabled:
            monitor.write_events([(f"Eval/ppl/{d}", v, self.state.step)
                                  for d, v in result["perplexity"].items()])
        return result

    def run(self) -> dict:
        """Train to the end (or failure) and return the runs-file row."""
        started = time.time()
        self._build_engine()
        self._resume()
        if self.doremi:
            self.doremi.start_trajectory(is_main_process())
        eval_set = build_eval_set(self.manifest, self.plan.domains, self.config.seq_len,
                                  self.config.eval_seed, self.config.eval_tokens_per_domain,
                                  self.config.eval_samples_per_domain)
        self.eval_set_entry = eval_set.describe()
        status, reason, final_eval = "ok", None, None
        try:
            self._loop(eval_set)
            final_eval = self._evaluate(eval_set)
            self._save_checkpoint()
        except RunFailed as failure:
            status, reason = "failed", str(failure)
            logger.error("run %s failed: %s", self.config.run_id, reason)
        finally:
            if self.doremi:
                self.doremi.close()
        row = self._result_row(status, reason, final_eval, time.time() - started)
        if is_main_process():
            atomic_write_json(self.output_dir / "result.json",
                              {"schema": RUNS_SCHEMA, "metric": "perplexity", "runs": [row]})
        return row

    def _loop(self, eval_set) -> None:
        config = self.config
        with _progress(self.plan.total_steps, self.state.step, config.progress) as bar:
            while self.state.step < self.plan.total_steps:
                step_loss = self._train_step()
                self._check_health(step_loss)
                if self.doremi:  # the weights of the next step, from this step's losses
                    self.doremi.end_step()
                self.state.step_losses.append(step_loss)
                self.state.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}")
                if config.eval_interval_steps and self.state.step % config.eval_interval_steps == 0 \
                        and self.state.step < self.plan.total_steps:
                    self._evaluate(eval_set)
                if (config.checkpoint_interval_steps and
                        self.state.step % config.checkpoint_interval_steps == 0) or \
                        self.state.step in config.keep_checkpoints_at_steps:
                    self._save_checkpoint()

    def _result_row(self, status, reason, final_eval, seconds) -> dict:
        consumed = self.stream.tokens_consumed(self.state.step)
        row = {"id": self.config.run_id, "train_tokens": consumed,
               "eval": final_eval["perplexity"] if final_eval else {}, "status": status,
               "eval_loss": final_eval["loss"] if final_eval else {},
               "eval_set": self.eval_set_entry,
               "eval_halves": final_eval["perplexity_halves"] if final_eval else [],
               "steps": self.state.step, "planned_steps": self.plan.total_steps,
               "epochs": self.epochs, "seed": self.config.seed,
               "config_fingerprint": self.config.fingerprint(), "wall_seconds": round(seconds, 3),
               # This process's evaluation time only: a resumed run counts from its restart.
               "eval_seconds": round(self.eval_seconds, 3),
               "step_losses": self.state.step_losses, "evals": self.state.evals}
        if self.config.branch_from:
            row["branch_from"] = dict(self.config.branch_from)
        if self.doremi:
            row["doremi"] = self.doremi.result_entry()
            # the stream followed the weights, not the plan: epochs from what was read
            row["epochs"] = {s.name: consumed[s.name] / self.config.seq_len / s.samples_per_epoch
                             for s in self.sources}
        if reason:
            row["reason"] = reason
            row["failure_kind"] = "training"  # deterministic: rerunning would fail the same way
        return row


def _checkpoint_tags(directory: Path, latest: Path) -> List[str]:
    """The tag ``latest`` names first, then the other saved tags, newest first."""
    named = latest.read_text(encoding="utf-8", errors="replace").strip()
    saved = sorted((p.name for p in directory.glob("step_*") if p.is_dir()), reverse=True)
    return ([named] if named else []) + [tag for tag in saved if tag != named]


def _damaged_files(tag_dir: Path) -> List[Path]:
    """The tag's torch files that are not whole zip archives (torch.save's format): cut off
    files lose the archive's directory, which sits at the end."""
    return [path for path in sorted(tag_dir.glob("*.pt")) if not zipfile.is_zipfile(path)]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", file=sys.stderr,
                disable=not (enabled and is_main_process()) or None)


def train(config: TrainConfig) -> dict:
    ensure_launcher_env()
    return Trainer(config).run()
