"""Speed and prefix adherence of the blend index: ours vs megatron-core's C++ helper.

Builds the index of N samples over m domains (random weights with a fixed seed, and
uniform weights) with ``autoscale_ds.data.blend`` and with megatron-core's
``build_blending_indices`` in the same run, and prints samples/s, their ratio and the worst
prefix deviation ``max |count_d(n) - n w_d|`` of each. Megatron is timed two ways: as its
BlendedDataset calls it (``numpy.zeros`` outputs, then the helper: the pages are touched
for the first time inside the call) and the helper alone on pre-touched arrays. Ours always
includes allocating its outputs, and with numba installed also importing numba and getting
the compiled kernel: "warm" loads it from numba's on-disk cache (every run after the first
on a machine; the bench fills a cache of its own first), "cold" compiles it (an empty
cache: the first run after installing). Each build runs in a fresh process, as at training
start, so neither side reuses pages the other freed. Prints figures measured in this run;
asserts nothing.

Run: python bench/bench_sampler.py [--num-samples 1e8] [--domains 10] [--seed 0]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from autoscale_ds.data.blend import (blend_engine, blend_indices, default_workers,
                                     prefix_deviation)


def _megatron_helper():
    warnings.filterwarnings("ignore")  # megatron-core warns about Apex/TE at import
    try:
        from megatron.core.datasets import helpers_cpp
    except ImportError:
        return None
    return helpers_cpp


def _ours(weights, n, workers):
    start = time.perf_counter()
    engine = blend_engine()  # imports numba, compiles or loads the kernel: timed too
    jit = time.perf_counter() - start
    domain, _ = blend_indices(weights, n, workers=workers)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "jit": jit, "engine": engine,
            "deviation": prefix_deviation(domain, weights)}


def _megatron(weights, n):
    helpers = _megatron_helper()
    if helpers is None:
        return None
    start = time.perf_counter()
    domain = np.zeros(n, dtype=np.int16)  # as megatron.core.datasets.blended_dataset does
    sample = np.zeros(n, dtype=np.int64)
    helpers.build_blending_indices(domain, sample, weights, len(weights), n, False)
    as_called = time.perf_counter() - start
    start = time.perf_counter()  # again, into the now-touched arrays
    helpers.build_blending_indices(domain, sample, weights, len(weights), n, False)
    kernel = time.perf_counter() - start
    return {"seconds": as_called, "kernel": kernel,
            "deviation": prefix_deviation(domain, weights)}


def _in_child(which: str, weights: np.ndarray, n: int, workers: int, jit_cache: str = ""):
    """Run one build in a fresh process: JSON figures back on the last stdout line.
    ``jit_cache``: numba's cache directory for the child (an empty one: compile)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", which, "--num-samples",
           str(n), "--workers", str(workers), "--weights", json.dumps(weights.tolist())]
    env = dict(os.environ, NUMBA_CACHE_DIR=jit_cache) if jit_cache else None
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(args) -> None:
    weights = np.array(json.loads(args.weights))
    n = int(args.num_samples)
    result = _ours(weights, n, args.workers) if args.child == "ours" else _megatron(weights, n)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=float, default=1e8)
    parser.add_argument("--domains", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="threads for ours (default: the usable cores, here "
                             f"{default_workers()})")
    parser.add_argument("--child", choices=["ours", "megatron"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    n = int(args.num_samples)
    workers = args.workers or default_workers()
    rng = np.random.default_rng(args.seed)
    cases = {f"random (seed {args.seed})": rng.random(args.domains),
             "uniform": np.ones(args.domains)}
    with tempfile.TemporaryDirectory() as warm_cache:
        _in_child("ours", np.ones(2) / 2, 1000, 1, warm_cache)  # fills the warm cache
        rows = [_case(name, raw / raw.sum(), n, workers, warm_cache)
                for name, raw in cases.items()]
    print(f"N = {n:,} samples, {args.domains} domains, {workers} thread(s) for ours, "
          f"{os.cpu_count()} CPU(s); ours runs the {rows[0]['ours']['engine']} engine")
    print(f"{'weights':>16} {'ours Ms/s':>10} {'cold Ms/s':>10} {'jit s':>11} "
          f"{'meg Ms/s':>9} {'meg kernel':>11} {'ratio':>6} {'cold':>5} {'vs kernel':>10} "
          f"{'ours dev':>9} {'meg dev':>8}")
    for row in rows:
        print(_format(row, n), flush=True)
    if rows[-1]["meg"] is None:
        print("megatron-core is not importable: timed ours only")
    print("ratio = megatron time (as BlendedDataset calls it) / our time, warm; cold: our "
          "first run after install (JIT compile included); vs kernel: megatron's helper "
          "alone on touched arrays. >= 1: ours is at least as fast. jit s: importing numba "
          "and loading (warm) / compiling (cold) the kernel, included in ours. Deviation in "
          "samples, worst over every prefix and domain")


def _case(name: str, weights: np.ndarray, n: int, workers: int, warm_cache: str) -> dict:
    with tempfile.TemporaryDirectory() as empty:
        cold = _in_child("ours", weights, n, workers, empty)
    ours = _in_child("ours", weights, n, workers, warm_cache)
    return {"name": name, "ours": ours, "cold": cold,
            "meg": _in_child("megatron", weights, n, workers)}


def _format(row: dict, n: int) -> str:
    ours, cold, meg = row["ours"], row["cold"], row["meg"]
    line = (f"{row['name']:>16} {n / ours['seconds'] / 1e6:>10.1f}"
            f" {n / cold['seconds'] / 1e6:>10.1f} {ours['jit']:>5.2f}/{cold['jit']:<5.2f}")
    if meg is None:
        return line + f" {'-':>9} {'-':>11} {'-':>6} {'-':>5} {'-':>10} {ours['deviation']:>9.3f}"
    return line + (f" {n / meg['seconds'] / 1e6:>9.1f} {n / meg['kernel'] / 1e6:>11.1f}"
                   f" {meg['seconds'] / ours['seconds']:>6.2f}"
                   f" {meg['seconds'] / cold['seconds']:>5.2f}"
                   f" {meg['kernel'] / ours['seconds']:>10.2f}"
                   f" {ours['deviation']:>9.3f} {meg['deviation']:>8.3f}")


if __name__ == "__main__":
    main()
