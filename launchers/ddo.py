#!/usr/bin/env python
"""Run a DDO sweep: plan the 2m+1 proxy runs, train what is missing, solve, write the mixture.

    python launchers/ddo.py --config DDO.yaml
    deepspeed --num_gpus 8 launchers/ddo.py --config DDO.yaml   # executor inprocess: every
                                                                # run uses all 8 GPUs
Same as ``autoscale ddo-run --config DDO.yaml``. Restarting skips finished runs.
"""

import sys

from autoscale_ds.orchestrate.ddo_run import main

if __name__ == "__main__":
    sys.exit(main())
