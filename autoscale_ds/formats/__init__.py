"""File formats and exporters: the public contracts.

``schemas`` reads and writes ``autoscale.runs/v1`` and ``autoscale.mixture/v1``;
``manifest`` the ``autoscale.domains/v1`` manifest of prepared domains; ``datapaths`` maps
domains to token files; ``export`` turns a mixture into the data
arguments of Megatron-LM, Megatron-DeepSpeed, GPT-NeoX and other trainers. Torch-free:
this layer sits at the bottom with the method math.

The schema API is re-exported here, so ``from autoscale_ds.formats import load_mixture``
is the short spelling for users.
"""

from .schemas import (METRICS, MIXTURE_SCHEMA, RUNS_SCHEMA, Mixture, Run, RunsFile,
                      check_mixture, load_mixture, load_runs, mixture_from_dict, runs_from_dict,
                      save_mixture, save_runs)

__all__ = ["METRICS", "MIXTURE_SCHEMA", "RUNS_SCHEMA", "Mixture", "Run", "RunsFile", "check_mixture",
           "load_mixture", "load_runs", "mixture_from_dict", "runs_from_dict", "save_mixture",
           "save_runs"]
