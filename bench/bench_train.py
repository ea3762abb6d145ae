"""Toolkit overhead and proxy throughput of the training loop (CPU or GPU).

Overhead = step time of our loop (blended stream + per-domain loss tracking + health
checks) / step time of a plain DeepSpeed loop on the same model and the same token
batches (already in memory, Hugging Face's built-in loss). Both engines live in this one
process and are timed in alternating blocks, so machine noise hits both. Goal: <= 1.02.

    python bench/bench_train.py --size tiny --seq-len 128 --micro-batch 8 --steps 30
"""

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _prepared(tmp: str) -> str:
    from autoscale_ds.data.stdlib_corpus import build_stdlib_corpus
    from autoscale_ds.data.prepare import PrepareConfig, prepare

    specs = build_stdlib_corpus(Path(tmp) / "raw", 1_500_000,
                                 domains=["code", "docstrings", "comments", "reference"])
    manifest = prepare(PrepareConfig(out_dir=f"{tmp}/prepared", domains=specs,
                                     train_vocab_size=8000, progress=False))
    return str(manifest.root / "manifest.yaml")


def _trainer(manifest: str, args, out: str):
    from autoscale_ds.train.config import TrainConfig
    from autoscale_ds.train.trainer import Trainer

    tokens = args.micro_batch * args.seq_len * (args.steps + args.warmup) * 2
    config = TrainConfig(manifest=manifest, output_dir=out, model_size=args.size,
                         seq_len=args.seq_len, micro_batch_size=args.micro_batch,
                         global_batch_size=args.micro_batch, progress=False, monitor=[],
                         tokens_per_domain={d: tokens / 4 for d in
                                            ("code", "docstrings", "comments", "reference")})
    trainer = Trainer(config)
    trainer._build_engine()
    return trainer


def _plain_engine(trainer):
    import deepspeed

    from autoscale_ds.train.models import build_model
    from autoscale_ds.train.trainer import build_ds_config

    config = trainer.config
    torch.manual_seed(config.seed)
    model = build_model(config.model_family, config.model_size, trainer.vocab_size, config.seq_len)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=build_ds_config(config, trainer.triple, torch.cuda.is_available()))
    return engine


def _time_block(fn, steps: int) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=None, help="prepared domains (default: built-in corpus)")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=3, help="alternating timing blocks per arm")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from autoscale_ds.train.distributed import ensure_launcher_env

    ensure_launcher_env()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest or _prepared(tmp)
        trainer = _trainer(manifest, args, f"{tmp}/run")
        plain = _plain_engine(trainer)
        batches = [trainer.stream.micro_batch(s, 0)[0] for s in range(args.steps + args.warmup)]
        device = plain.device

        def plain_step(counter=[0]):
            tokens = batches[counter[0] % len(batches)].to(device)
            counter[0] += 1
            loss = plain(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
            plain.backward(loss)
            plain.step()

        def our_step():
            trainer._train_step()
            trainer.state.step += 1

        _time_block(plain_step, args.warmup)
        _time_block(our_step, args.warmup)
        ours, theirs = [], []
        per_block = max(1, args.steps // args.blocks)
        for _ in range(args.blocks):
            theirs.append(_time_block(plain_step, per_block))
            ours.append(_time_block(our_step, per_block))
    ours_s, plain_s = statistics.median(ours), statistics.median(theirs)
    tokens_per_step = args.micro_batch * args.seq_len
    print(f"model gpt2-{args.size}, seq {args.seq_len}, micro batch {args.micro_batch}, "
          f"device {device}")
    print(f"plain DeepSpeed loop : {plain_s * 1e3:8.1f} ms/step  {tokens_per_step / plain_s:10,.0f} tokens/s")
    print(f"autoscale-ds loop    : {ours_s * 1e3:8.1f} ms/step  {tokens_per_step / ours_s:10,.0f} tokens/s")
    ratios = sorted(o / p for o, p in zip(ours, theirs))
    print(f"overhead ratio       : {ours_s / plain_s:.3f}  (goal <= 1.02; per block "
          f"{ratios[0]:.3f}..{ratios[-1]:.3f} over {len(ratios)} alternating blocks)")


if __name__ == "__main__":
    main()
