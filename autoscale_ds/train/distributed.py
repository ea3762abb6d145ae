"""Process-group plumbing shared by the launchers: works under `deepspeed`, `torchrun`, or
as one plain `python` process."""

import logging
import os
import socket

logger = logging.getLogger(__name__)


def ensure_launcher_env() -> None:
    """A plain `python` run gets the variables a launcher would set (else DeepSpeed looks for
    MPI). Under `deepspeed`/`torchrun` they are already there and left untouched."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
                       "MASTER_PORT": os.environ.get("MASTER_PORT", str(free_port()))})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_sum(tensor):
    """In-place sum over ranks when a process group is up; identity otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
