"""The data-parallel layout: which positions of the blended stream each rank reads.

One rule, used by the trainer (:class:`autoscale_ds.train.stream.TrainStream`) and by the
public sampler (:class:`autoscale_ds.data.sampler.BlendSampler`), so a user's own loader
feeds a model exactly what ``launchers/train.py`` would.

Micro-steps are counted globally: optimizer step ``s`` with ``A`` accumulation steps runs
micro-steps ``j = s*A + a`` for ``a = 0 .. A-1``. Micro-step ``j`` consumes the ``W*m``
positions ``[j*W*m, (j+1)*W*m)`` (W = world size, m = micro batch size), and rank ``r``
takes the ``m`` consecutive positions starting at ``j*W*m + r*m``. So optimizer step ``s``
consumes ``[s*G, (s+1)*G)`` with G = A*W*m, the ranks partition every micro-step, and the
stream is consumed in order whatever W, m and A are. With m = 1 this is the stride layout
(rank r reads r, r + W, r + 2W, ...).

Pure integer arithmetic, no torch: importable by the planning code and the CLI.
"""

from ..errors import InputError


def check_layout(rank: int, micro_batch_size: int, world_size: int) -> None:
    """Refuse a layout no launcher could produce (the message names the bad value)."""
    if int(micro_batch_size) != micro_batch_size or micro_batch_size < 1:
        raise InputError(f"micro batch size must be a whole number >= 1, got {micro_batch_size!r}")
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise InputError(f"need 0 <= rank < world_size, got rank {rank}, world size {world_size}")


def samples_per_micro_step(micro_batch_size: int, world_size: int) -> int:
    """Global samples one micro-step consumes (all ranks together): W*m."""
    return int(micro_batch_size) * int(world_size)


def micro_batch_positions(micro_step: int, rank: int, micro_batch_size: int,
                          world_size: int) -> range:
    """The ``m`` consecutive global positions rank ``rank`` reads at global ``micro_step``."""
    if micro_step < 0:
        raise InputError(f"micro-step must be >= 0, got {micro_step}")
    check_layout(rank, micro_batch_size, world_size)
    m = int(micro_batch_size)
    start = int(micro_step) * samples_per_micro_step(m, world_size) + int(rank) * m
    return range(start, start + m)


def micro_steps_done(consumed_samples: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-steps behind ``consumed_samples``, which must end one (a resume point)."""
    per_step = samples_per_micro_step(micro_batch_size, world_size)
    if consumed_samples < 0 or consumed_samples % per_step:
        raise InputError(
            f"consumed samples {consumed_samples:,} is not a whole number of micro-steps: "
            f"world size {world_size} x micro batch {micro_batch_size} = {per_step} samples "
            "each. Resume from a count the trainer saved (a multiple of that), or use the "
            "world size and micro batch the run was saved with")
    return consumed_samples // per_step


def whole_micro_steps(num_samples: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-steps that fit in ``num_samples``; a partial last one is not served (every
    rank must serve the same count, or collective ops would hang)."""
    return max(0, int(num_samples)) // samples_per_micro_step(micro_batch_size, world_size)
