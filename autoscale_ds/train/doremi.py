"""DoReMi inside the DeepSpeed loop: a proxy run that re-weights its own data stream by
online Group DRO against a frozen reference model (Xie et al. 2023, Algorithm 1).

How another layer uses it (the interface is kept stable):

1. the *reference run* is an ordinary ``TrainConfig`` run on the base mixture;
2. the *proxy run* is a ``TrainConfig`` with ``tokens_per_domain`` = the total budget split by
   the base weights and ``doremi={"reference_checkpoint_dir": "<ref output_dir>/checkpoints",
   "step_size": 1.0, "smoothing": 0.001}`` (same model_family / model_size / seq_len);
3. when it ends, its result row carries ``doremi.average_weights`` (domain -> weight, the
   DoReMi mixture), ``doremi.final_weights`` and ``doremi.steps``, and
   ``<output_dir>/doremi_weights.jsonl`` holds one ``{"step", "weights", "excess_loss"}``
   line per update (``method.doremi.read_trajectory`` reads it).

Per optimizer step the proxy's and the reference's per-token losses on the same micro-batch
tokens give each domain's clipped excess loss (summed over the step's micro-batches and all
ranks, so every rank computes the same weights); ``method.doremi.DoReMiWeights`` updates the
weights, and the *next* step's batch is sampled with them.

Sampling instead of loss re-weighting. The paper samples batches uniformly and weights each
domain's loss by alpha_t; we draw each step's batch with the weights and keep the plain mean
loss. Both give the same expected gradient, sum_i alpha_i * grad(loss_i), and sampling spends
no compute on domains of negligible weight. Two consequences: the weights act one step later
(the batch of step t was drawn with alpha_{t-1}), and a domain absent from a step's batch has
no excess-loss estimate that step, so it gets lambda = 0 that step (no evidence, no push; its
weight still shrinks relative to domains with a positive excess, so a domain driven down to
the smoothing floor is rarely measured again -- the paper's uniform sampling has no such lag).

The weights start from the run's base mixture (the proportions of ``tokens_per_domain``; give a
uniform budget to start from uniform weights). The stream (``DoReMiStream``) is planned one step at a time and is a deterministic function of
the seed and the weight trajectory, which the checkpoint carries: a resumed run replays it and
continues byte-identically.
"""

import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write_text
from ..data.blend import blend_indices
from ..errors import InputError
from ..method.doremi import DoReMiWeights, trajectory_line
from .distributed import all_reduce_sum
from .models import build_model
from .plan import BatchTriple, SamplePlan
from .stream import TrainStream

logger = logging.getLogger(__name__)

TRAJECTORY_FILE = "doremi_weights.jsonl"
_MODEL_STATES = "mp_rank_00_model_states.pt"
_IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- the stream

class DoReMiStream(TrainStream):
    """The training stream of a DoReMi run, planned one optimizer step at a time.

    Step s draws its G samples so that each domain's running count follows the running sum of
    G x (the weights of steps 0..s): the step's block is an EDF blend (``data.blend``) of what
    each domain is still owed. A fresh blend of only G samples would round a small weight down
    every step (a domain of weight 0.05 in batches of 8 would never be drawn); carrying the
    shortfall keeps the long-run share of every domain within about one sample of its target.
    Each domain's sample counter runs on, so no sample is repeated or skipped.
    """

    def __init__(self, sources: Sequence, plan: SamplePlan, triple: BatchTriple, rank: int):
        self.sources, self.plan, self.triple, self.rank = list(sources), plan, triple, rank
        self.step_weights: List[List[float]] = []
        self.replay([])

    def replay(self, later_weights: Sequence[Sequence[float]]) -> None:
        """Re-plan from step 0: the plan's own weights, then ``later_weights`` for steps 1, 2..."""
        total = self.plan.total_steps * self.triple.global_batch_size
        self.domain_index = np.zeros(total, dtype=np.int16)
        self.domain_sample_index = np.zeros(total, dtype=np.int64)
        self._owed = np.zeros(len(self.plan.domains), dtype=np.float64)
        self._drawn = np.zeros(len(self.plan.domains), dtype=np.int64)
        self.step_weights = []
        for weights in [self.plan.weights, *later_weights]:
            self.plan_next_step(weights)

    @property
    def planned_steps(self) -> int:
        return len(self.step_weights)

    def plan_next_step(self, weights: Sequence[float]) -> None:
        """Draw the next unplanned step's samples with ``weights`` (no-op past the run's end)."""
        step, size = self.planned_steps, self.triple.global_batch_size
        if step >= self.plan.total_steps:
            return
        owed = self._owed + size * np.asarray(weights, dtype=np.float64)
        # a domain drawn ahead of its share (rounding) waits; the others share the step
        shortfall = np.maximum(owed - self._drawn, 0.0)
        domains, samples = blend_indices(shortfall / shortfall.sum(), size, workers=1)
        block = slice(step * size, (step + 1) * size)
        self.domain_index[block] = domains
        self.domain_sample_index[block] = samples + self._drawn[domains]
        self._drawn += np.bincount(domains, minlength=len(self._drawn))
        self._owed = owed
        self.step_weights.append([float(w) for w in weights])

    def micro_batch(self, step: int, accumulation_index: int):
        if step >= self.planned_steps:  # the weights of that step are not known yet
            raise RuntimeError(f"DoReMi stream: step {step} is not planned yet "
                               f"({self.planned_steps} steps planned)")
        return super().micro_batch(step, accumulation_index)


# ----------------------------------------------------------------------------- the reference

def reference_tag_dir(checkpoint_dir: str) -> Path:
    """The reference run's newest checkpoint (named by its ``latest``), checked to exist."""
    directory = Path(checkpoint_dir)
    latest = directory / "latest"
    if not latest.is_file():
        raise InputError(f"doremi.reference_checkpoint_dir {directory}: no DeepSpeed checkpoint "
                         f"there ({latest} does not exist); train the reference run first and "
                         "point at its <output_dir>/checkpoints")
    tag_dir = directory / latest.read_text(encoding="utf-8").strip()
    if not _model_states_files(tag_dir):
        raise InputError(f"doremi.reference_checkpoint_dir {directory}: its latest checkpoint "
                         f"{tag_dir} has no model states (*{_MODEL_STATES}); rerun the "
                         "reference run")
    if not (directory.parent / "result.json").is_file():  # our trainer writes it at the end
        logger.warning("DoReMi reference %s: no result.json next to it, so the reference run "
                       "may not have finished; using its checkpoint %s", directory, tag_dir.name)
    return tag_dir


def load_reference_model(tag_dir: Path, family: str, size: str, vocab_size: int, seq_len: int,
                         device) -> torch.nn.Module:
    """The reference run's weights in a model of this run's shape, frozen, in eval mode."""
    # Building a model draws initial weights from the global RNG: fork it so the proxy's
    # dropout and masking draws are those of a run without a reference.
    with torch.random.fork_rng(devices=[]):
        model = build_model(family, size, vocab_size, seq_len, dropout=0.0)
    state = _reference_state_dict(tag_dir)
    _check_shapes(model, state, tag_dir, family, size, seq_len)
    model.load_state_dict(state)
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    logger.info("DoReMi reference: %s", tag_dir)
    return model


def _model_states_files(tag_dir: Path) -> List[Path]:
    """ZeRO 0-2 write ``mp_rank_00_model_states.pt``, ZeRO-3 one ``zero_pp_rank_R_...`` per rank."""
    return sorted(tag_dir.glob(f"*{_MODEL_STATES}")) if tag_dir.is_dir() else []


def _reference_state_dict(tag_dir: Path) -> dict:
    path = _model_states_files(tag_dir)[0]
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        state = saved.get("module") or {}
        if not state or any(t.numel() == 0 for t in state.values()):
            # ZeRO-3: the model states hold placeholders, the optimizer shards the weights
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except Exception as exc:  # torch's zip/pickle errors have no common base class
        raise InputError(f"DoReMi reference checkpoint {tag_dir} is unreadable "
                         f"({type(exc).__name__}: {exc}); rerun the reference run") from None
    return state


def _check_shapes(model, state: dict, tag_dir: Path, family: str, size: str, seq_len: int) -> None:
    mine = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    theirs = {name: tuple(t.shape) for name, t in state.items()}
    wrong = [f"{n}: reference {theirs.get(n, 'missing')}, proxy {s}"
             for n, s in mine.items() if theirs.get(n) != s]
    wrong += [f"{n}: reference {s}, proxy missing" for n, s in theirs.items() if n not in mine]
    if wrong:
        raise InputError(
            f"DoReMi reference checkpoint {tag_dir} holds another model than this run's "
            f"{family}-{size} at seq_len {seq_len} ({len(wrong)} tensors differ, e.g. "
            f"{'; '.join(wrong[:2])}); the reference must be trained with the same "
            "model_family, model_size, seq_len and manifest (tokenizer)")


def excess_loss_sums(proxy_logits: torch.Tensor, reference_logits: torch.Tensor,
                     labels: torch.Tensor, domain_ids: torch.Tensor, num_domains: int):
    """Per domain, the sum over its counted tokens of max(proxy loss - reference loss, 0),
    and the number of those tokens (float64 [num_domains] each). ``domain_ids`` per sample."""
    vocab = proxy_logits.shape[-1]
    flat_labels = labels.reshape(-1)
    proxy = F.cross_entropy(proxy_logits.detach().reshape(-1, vocab).float(), flat_labels,
                            reduction="none", ignore_index=_IGNORE_INDEX)
    reference = F.cross_entropy(reference_logits.reshape(-1, vocab).float(), flat_labels,
                                reduction="none", ignore_index=_IGNORE_INDEX)
    counted = flat_labels != _IGNORE_INDEX
    excess = torch.where(counted, (proxy - reference).clamp_min(0), 0.0).double()
    domains = domain_ids[:, None].expand(labels.shape).reshape(-1).long()
    sums = torch.zeros(num_domains, dtype=torch.float64, device=excess.device)
    sums.scatter_add_(0, domains, excess)
    counts = torch.zeros_like(sums).scatter_add_(0, domains, counted.double())
    return sums, counts


# ----------------------------------------------------------------------------- the run

class DoReMiRun:
    """The DoReMi side of one proxy run: reference model, weights, stream and trajectory file.

    The trainer calls ``load_reference`` once the engine exists, ``add_micro_batch`` after each
    forward pass, ``end_step`` after each optimizer step, ``state_dict``/``load_state_dict``
    with its checkpoints, ``start_trajectory`` once resumed, ``commit`` after each checkpoint
    and ``result_entry`` for the result row.
    """

    def __init__(self, settings: dict, plan: SamplePlan, stream: DoReMiStream, output_dir: Path):
        self.step_size = float(settings["step_size"])
        self.smoothing = float(settings["smoothing"])
        self.tag_dir = reference_tag_dir(settings["reference_checkpoint_dir"])
        self.domains = list(plan.domains)
        self.weights = DoReMiWeights(self.domains, plan.weights)
        self.history: List[dict] = []  # per update: {"weights": [...], "excess_loss": [...]}
        self.stream = stream
        self.path = Path(output_dir) / TRAJECTORY_FILE
        self.reference: Optional[torch.nn.Module] = None
        self._file: Optional[int] = None
        self._reset_step()

    def _reset_step(self) -> None:
        self._sums = torch.zeros(len(self.domains), dtype=torch.float64)
        self._counts = torch.zeros_like(self._sums)

    def load_reference(self, family: str, size: str, vocab_size: int, seq_len: int, device) -> None:
        self.reference = load_reference_model(self.tag_dir, family, size, vocab_size, seq_len, device)

    @torch.no_grad()
    def add_micro_batch(self, inputs: torch.Tensor, proxy_logits: torch.Tensor,
                        labels: torch.Tensor, domain_ids: torch.Tensor) -> None:
        """Run the reference on the proxy's micro-batch and add its excess losses."""
        reference_logits = self.reference(input_ids=inputs).logits
        sums, counts = excess_loss_sums(proxy_logits, reference_logits, labels, domain_ids,
                                        len(self.domains))
        self._sums += sums.cpu()
        self._counts += counts.cpu()

    def end_step(self) -> None:
        """All ranks' excess losses -> one weight update -> the next step's samples."""
        # one float64 collective: sums and token counts of every rank, identical on each
        packed = all_reduce_sum(torch.cat([self._sums, self._counts]).to(_collective_device()))
        sums, counts = np.split(packed.cpu().numpy(), 2)
        self._reset_step()
        # A domain absent from this step's batch (no tokens) gets lambda = 0: no evidence.
        excess = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        weights = self.weights.update(excess, self.step_size, self.smoothing)
        self.history.append({"weights": weights.tolist(), "excess_loss": excess.tolist()})
        self.stream.plan_next_step(weights)
        self._append_line(len(self.history) - 1)

    # --------------------------------------------------------------- checkpoint and files

    def state_dict(self) -> dict:
        return {"weights": self.weights.to_dict(), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: Optional[dict]) -> None:
        if not state or "weights" not in state:
            raise InputError("checkpoint has no DoReMi state; it was not written by this "
                             "DoReMi run: use a new output_dir or delete the checkpoints")
        self.weights = DoReMiWeights.from_dict(state["weights"])
        self.history = [dict(h) for h in state["history"]]
        self.stream.replay([h["weights"] for h in self.history])

    def start_trajectory(self, main_process: bool) -> None:
        """Rewrite the trajectory file from the restored history (lines written after the
        checkpoint a crash resumed from are dropped: they will be recomputed identically),
        then keep it open for appending (main process only)."""
        if not main_process:
            return
        atomic_write_text(self.path, "".join(self._line(j) for j in range(len(self.history))))
        self._file = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def _line(self, index: int) -> str:
        entry = self.history[index]
        return trajectory_line(index + 1, dict(zip(self.domains, entry["weights"])),
                               dict(zip(self.domains, entry["excess_loss"])))

    def _append_line(self, index: int) -> None:
        if self._file is not None:
            # one write() of a whole line on an O_APPEND descriptor: a killed process leaves
            # whole lines only, and the OS keeps them once written
            os.write(self._file, self._line(index).encode("utf-8"))

    def commit(self) -> None:
        """Make the lines so far durable (called with each checkpoint)."""
        if self._file is not None:
            os.fsync(self._file)

    def close(self) -> None:
        if self._file is not None:
            os.fsync(self._file)
            os.close(self._file)
            self._file = None

    def result_entry(self) -> dict:
        return {"average_weights": self.weights.average_weights(),
                "final_weights": self.weights.current_weights(), "steps": self.weights.steps,
                "step_size": self.step_size, "smoothing": self.smoothing,
                "reference_checkpoint": str(self.tag_dir), "trajectory": TRAJECTORY_FILE}


def _collective_device():
    """gloo reduces CPU tensors, NCCL only CUDA ones."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
