#!/usr/bin/env python
"""Run a DDO sweep: plan the 2m+1 proxy runs, train what is missing, solve, write the mixture.

    python launchers/ddo.py --config DDO.yaml
    deepspeed --num_gpus 8 launchers/ddo.py --config DDO.yaml   # every run on all 8 GPUs
    torchrun --nproc_per_node 8 launchers/ddo.py --config DDO.yaml

Same as ``autoscale ddo-run --config DDO.yaml``. Restarting skips finished runs. Under a
multi-rank launch the executor is always in-process (a `local` or `slurm` executor is
ignored with a warning): rank 0 alone plans, records runs.json, solves and writes the
mixture; the other ranks train each run with it and exit 0.
"""

import sys

from autoscale_ds.orchestrate.ddo_run import main

if __name__ == "__main__":
    sys.exit(main())
