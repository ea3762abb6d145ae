"""Cost of per-domain loss tracking: fused Triton kernel, torch reference, plain cross-entropy.

Prints figures measured in this run; asserts nothing.

  on CUDA:  python bench/bench_domain_loss.py   # 8192 tokens, V=50257, bf16: time + peak memory
  on CPU:   python bench/bench_domain_loss.py   # reference vs plain F.cross_entropy (overhead)
            python bench/bench_domain_loss.py --interpret   # + the kernel, interpreted, agrees

All timings are forward + backward of the mean loss.
"""

import argparse
import os
import time


def _inputs(torch, tokens: int, vocab: int, dtype, device, num_domains: int, seq_len: int):
    gen = torch.Generator(device="cpu").manual_seed(0)
    batch = max(tokens // seq_len, 1)
    logits = (torch.randn(batch, seq_len, vocab, generator=gen) * 2).to(dtype).to(device)
    labels = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    labels[torch.rand(batch, seq_len, generator=gen) < 0.05] = -100  # some padding
    domains = torch.randint(0, num_domains, (batch,), generator=gen)
    return logits.requires_grad_(), labels.to(device), domains.to(device)


def _variants(torch, num_domains: int, with_fused: bool):
    import torch.nn.functional as F

    from autoscale_ds.train.domain_loss import per_domain_cross_entropy

    def plain(logits, labels, domains):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=-100)

    def tracked(backend):
        return lambda logits, labels, domains: per_domain_cross_entropy(
            logits, labels, domains, num_domains, backend=backend, check_values=False).loss

    variants = {"plain F.cross_entropy": plain, "reference (torch)": tracked("torch")}
    if with_fused:
        variants["fused (triton)"] = tracked("triton")
    return variants


def _time_step(torch, fn, args, repeats: int, device) -> float:
    """Fastest forward + backward of ``repeats`` (seconds), after one warm-up step."""
    logits, best = args[0], float("inf")
    for step in range(repeats + 1):
        _sync(torch, device)
        start = time.perf_counter()
        fn(*args).backward()
        logits.grad = None
        _sync(torch, device)
        if step > 0:  # step 0 compiles kernels and warms the allocator
            best = min(best, time.perf_counter() - start)
    return best


def _peak_bytes(torch, fn, args) -> int:
    """Peak CUDA memory above what was allocated before one forward + backward."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(*args).backward()
    args[0].grad = None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _report(torch, args, device, dtype, with_fused: bool) -> None:
    inputs = _inputs(torch, args.tokens, args.vocab, dtype, device, args.domains, args.seq_len)
    print(f"{args.tokens} tokens, V={args.vocab}, {dtype}, {device}, best of {args.repeats}")
    print(f"{'variant':<24} {'ms/step':>9} {'vs plain':>9} {'peak MiB':>9}")
    times = {}
    for name, fn in _variants(torch, args.domains, with_fused).items():
        times[name] = _time_step(torch, fn, inputs, args.repeats, device)
        peak = (f"{_peak_bytes(torch, fn, inputs) / 2**20:9.0f}" if device.type == "cuda"
                else f"{'-':>9}")
        ratio = times[name] / times["plain F.cross_entropy"]
        print(f"{name:<24} {times[name] * 1e3:9.2f} {ratio:8.2f}x {peak}")
    if "fused (triton)" in times:
        print(f"fused speed-up over reference: "
              f"{times['reference (torch)'] / times['fused (triton)']:.2f}x")


def _interpret_check(torch) -> None:
    """The kernel under the CPU interpreter on a small shape: agreement, not speed."""
    from autoscale_ds.train.domain_loss import per_domain_cross_entropy
    cpu = torch.device("cpu")
    logits, labels, domains = _inputs(torch, 64, 1000, torch.float32, cpu, 4, 16)
    results = {}
    for backend in ("triton", "torch"):
        start = time.perf_counter()
        out = per_domain_cross_entropy(logits, labels, domains, 4, backend=backend)
        (grad,) = torch.autograd.grad(out.loss, logits)
        results[backend] = (out, grad, time.perf_counter() - start)
    (fused, fused_grad, fused_s), (ref, ref_grad, ref_s) = results["triton"], results["torch"]
    print("\ninterpreted kernel vs reference (64 tokens, V=1000, fp32):")
    print(f"  loss        {fused.loss.item():.6f} vs {ref.loss.item():.6f}")
    print(f"  sums        max |diff| "
          f"{(fused.loss_sum_per_domain - ref.loss_sum_per_domain).abs().max().item():.2e}")
    print(f"  tokens      {fused.tokens_per_domain.tolist()} vs {ref.tokens_per_domain.tolist()}")
    print(f"  gradient    max |diff| {(fused_grad - ref_grad).abs().max().item():.2e}")
    print(f"  time        {fused_s * 1e3:.0f} ms interpreted vs {ref_s * 1e3:.1f} ms torch "
          f"({fused_s / ref_s:.0f}x; the interpreter is for correctness only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, help="tokens per step (default 8192 CUDA, "
                        "1024 CPU)")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--domains", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--interpret", action="store_true",
                        help="also run the kernel under TRITON_INTERPRET=1 on a small CPU shape")
    args = parser.parse_args()
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton
    import torch

    from autoscale_ds.train.domain_loss import apex_available, triton_unavailable_reason

    cuda = torch.cuda.is_available() and not args.interpret
    device = torch.device("cuda" if cuda else "cpu")
    args.tokens = args.tokens or (8192 if cuda else 1024)
    args.seq_len = min(args.seq_len, args.tokens)
    args.repeats = args.repeats or (20 if cuda else 5)
    reason = triton_unavailable_reason(device) if cuda else "no CUDA device"
    print(f"torch {torch.__version__}; apex available: {apex_available()}; "
          f"fused kernel: {'yes' if reason is None else 'no (' + reason + ')'}")
    _report(torch, args, device, torch.bfloat16 if cuda else torch.float32,
            with_fused=cuda and reason is None)
    if args.interpret:
        _interpret_check(torch)


if __name__ == "__main__":
    main()
