"""autoscale-ds: compute-optimal data mixtures for LLM pretraining (AutoScale, Kang et al.).

Layers, each importing only the ones below it:

- ``cli``: the ``autoscale`` command, one module per sub-command;
- ``orchestrate`` (proxy sweeps, executors, SLURM, the pipeline) and ``integrations``
  (megatron-core blends);
- ``train`` (the DeepSpeed loop) and ``data`` (tokenised domains, the blend index, the
  sampler);
- ``method`` (fit, DDO solve, prediction, noise) and ``formats`` (schemas, data paths,
  exporters), with the shared base modules (errors, atomic, loaders, yaml_config, tables,
  console).

Importing the package is cheap; ``method`` and ``formats`` never import torch or deepspeed.
"""

__version__ = "0.1.0"
