#!/usr/bin/env python
"""Train one run (a DDO proxy or the target) with DeepSpeed.

    deepspeed --num_gpus 8 launchers/train.py --config RUN.yaml
    torchrun --nproc_per_node 2 launchers/train.py --config RUN.yaml
    python launchers/train.py --config RUN.yaml            # one process, no launcher
    python launchers/train.py --config RUN.yaml --deepspeed_config ds_configs/zero2.json
                                  # DeepSpeed's own flags work; --deepspeed_config = ds_config

The run's result is ``<output_dir>/result.json`` (an ``autoscale.runs/v1`` file with one
row). Exit codes: 0 trained, 3 the run failed and was recorded (NaN, divergence), 2 bad input
(one line: ``train: error: ...``).
"""

import sys

from autoscale_ds.train.launch import main

if __name__ == "__main__":
    sys.exit(main())
