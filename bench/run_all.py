"""Run every benchmark of the project and print a summary table.

    python bench/run_all.py            # full sizes (the sampler builds 10^8 samples: ~1 GB)
    python bench/run_all.py --quick    # small sizes, about 6 minutes on 2 cores + ~3.5 for noise

Each benchmark runs in its own process (their numbers are never disturbed by one another);
its full output is kept under --out (default bench_results/), and the summary repeats the
figures each printed (ratios, throughputs). Nothing is asserted.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (name, script, full-size arguments, quick arguments)
BENCHMARKS = [
    ("math", "bench_math.py", [], ["--repeats", "2", "--sizes", "7", "100"]),
    ("prepare", "bench_prepare.py", ["--chars", "8M"], ["--chars", "1M"]),
    ("sampler", "bench_sampler.py", ["--num-samples", "1e8"], ["--num-samples", "2e6"]),
    ("domain loss", "bench_domain_loss.py", [], []),
    ("training overhead", "bench_train.py", ["--steps", "60", "--blocks", "6"],
     ["--steps", "12", "--blocks", "2"]),
    # The quality benchmark at a small size in both modes, every default arm (DoReMi at the
    # largest quick budget, RegMix's 16 proxies at the smallest). The full size takes ~1.5 h on
    # 2 cores: run bench/quality.py on its own for it.
    ("quality", "quality.py", ["--quick", "--seeds", "3", "--out", "{out}/quality_small"],
     ["--quick", "--out", "{out}/quality_quick"]),
    # The noise of one proxy measurement: full at the demo's smallest budget (two DDO sweeps and
    # a third seed's base run); quick at the quick quality run's smallest budget, two seeds.
    ("noise", "noise.py", ["--out", "{out}/noise"],
     ["--quick", "--seeds", "0", "1", "--out", "{out}/noise_quick"]),
]
_SUMMARY_LINES = 24  # each benchmark prints its figures last; the tail is the summary


def run(name: str, script: str, args, out_dir: Path):
    started = time.perf_counter()
    args = [a.format(out=out_dir) for a in args]
    result = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                            text=True)
    seconds = time.perf_counter() - started
    log = out_dir / f"{script.removesuffix('.py')}.txt"
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    return result.returncode, seconds, result.stdout, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--only", action="append", help="run only these benchmarks (by name)")
    parser.add_argument("--out", default="bench_results", help="directory for full outputs")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = []
    for name, script, full, quick in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        print(f"==> {name} ({script})", flush=True)
        code, seconds, stdout, log = run(name, script, quick if args.quick else full, out_dir)
        figures = [line.rstrip() for line in stdout.splitlines() if line.strip()][-_SUMMARY_LINES:]
        summary.append((name, code, seconds, figures, log))
    print("\n" + "=" * 78 + "\nSUMMARY" + (" (quick sizes)" if args.quick else ""))
    for name, code, seconds, figures, log in summary:
        status = "ok" if code == 0 else f"FAILED (exit {code}, see {log})"
        print(f"\n{name}: {status}, {seconds:.0f} s")
        for line in figures:
            print(f"    {line}")
    return 0 if all(code == 0 for _, code, *_ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
