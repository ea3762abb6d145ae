"""Per-domain cross-entropy: reference vs a naive loop, fused kernel vs reference, DDP sums.

The kernel runs under ``TRITON_INTERPRET=1`` on CPU, which must be set before triton is
imported; so this file re-runs itself as a script in a subprocess with that variable (and,
for the distributed test, as two gloo ranks). ``python tests/train/test_domain_loss.py
--interpret-cases`` prints the kernel-vs-reference errors as JSON.
"""

import json
import math
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autoscale_ds.train import domain_loss as dl
from autoscale_ds.train.domain_loss import (DomainLoss, DomainLossTracker, apex_available,
                                            per_domain_cross_entropy, reduce_across_ranks)

REPO_ROOT = Path(__file__).resolve().parents[2]
IGNORE = -100


def _env(**extra) -> dict:
    """This process's environment with the repository importable, plus ``extra``."""
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


def _inputs(batch, seq, vocab, num_domains, seed=0, dtype=torch.float32, per_sample=True,
            ignored_fraction=0.2, logit_scale=3.0, absent_domain=None, strided=False,
            masked_prefix=0):
    """Logits (a leaf, or a slice of one), labels with some ignored, domain ids.

    ``masked_prefix`` sets the first vocabulary entries to -inf (a masked vocabulary).
    """
    gen = torch.Generator().manual_seed(seed)
    full = (torch.randn(batch, seq + int(strided), vocab, generator=gen) * logit_scale)
    full[..., :masked_prefix] = -math.inf
    leaf = full.to(dtype).requires_grad_()
    logits = leaf[:, :seq] if strided else leaf
    labels = torch.randint(masked_prefix, vocab, (batch, seq), generator=gen)
    labels[torch.rand(batch, seq, generator=gen) < ignored_fraction] = IGNORE
    shape = (batch,) if per_sample else (batch, seq)
    domains = torch.randint(0, num_domains, shape, generator=gen)
    if absent_domain is not None:
        domains[domains == absent_domain] = (absent_domain + 1) % num_domains
    return leaf, logits, labels, domains


def _naive(logits, labels, token_domains, num_domains):
    """Independent float64 answer: one cross-entropy call per domain."""
    flat = logits.detach().reshape(-1, logits.shape[-1]).double()
    flat_labels, flat_domains = labels.reshape(-1), token_domains.reshape(-1)
    sums, counts = [], []
    for domain in range(num_domains):
        keep = (flat_domains == domain) & (flat_labels != IGNORE)
        counts.append(int(keep.sum()))
        sums.append(float(F.cross_entropy(flat[keep], flat_labels[keep], reduction="sum"))
                    if counts[-1] else 0.0)
    mean = sum(sums) / sum(counts) if sum(counts) else 0.0
    return mean, sums, counts


@pytest.mark.parametrize("per_sample", [True, False])
def test_reference_matches_naive_loop(per_sample):
    _, logits, labels, domains = _inputs(4, 7, 50, 5, per_sample=per_sample, absent_domain=3)
    out = per_domain_cross_entropy(logits, labels, domains, 5, backend="torch")
    token_domains = domains[:, None].expand(4, 7) if per_sample else domains
    mean, sums, counts = _naive(logits, labels, token_domains, 5)
    assert out.loss.item() == pytest.approx(mean, rel=1e-5)
    assert out.loss_sum_per_domain.dtype == torch.float32
    assert out.loss_sum_per_domain.tolist() == pytest.approx(sums, rel=1e-5, abs=1e-5)
    assert out.tokens_per_domain.dtype == torch.int64
    assert out.tokens_per_domain.tolist() == counts
    assert counts[3] == 0 and sum(counts) == int((labels != IGNORE).sum())
    assert not out.loss_sum_per_domain.requires_grad and not out.tokens_per_domain.requires_grad


def test_per_sample_ids_equal_expanded_per_token_ids():
    _, logits, labels, domains = _inputs(3, 5, 20, 4)
    by_sample = per_domain_cross_entropy(logits, labels, domains, 4, backend="torch")
    by_token = per_domain_cross_entropy(logits, labels, domains[:, None].expand(3, 5), 4,
                                        backend="torch")
    flat = per_domain_cross_entropy(logits.reshape(15, 20), labels.reshape(15),
                                    domains.repeat_interleave(5), 4, backend="torch")
    for other in (by_token, flat):
        assert torch.equal(other.loss_sum_per_domain, by_sample.loss_sum_per_domain)
        assert torch.equal(other.tokens_per_domain, by_sample.tokens_per_domain)
        assert other.loss.item() == by_sample.loss.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_gradient_equals_mean_cross_entropy(dtype):
    leaf, logits, labels, domains = _inputs(3, 6, 40, 3, dtype=dtype, strided=True)
    out = per_domain_cross_entropy(logits, labels, domains, 3, backend="torch")
    (ours,) = torch.autograd.grad(out.loss, leaf)
    expected_loss = F.cross_entropy(logits.float().reshape(-1, 40), labels.reshape(-1),
                                    ignore_index=IGNORE)
    (expected,) = torch.autograd.grad(expected_loss, leaf)
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_all_ignored_gives_zero_loss_with_zero_grad_not_nan():
    leaf, logits, labels, domains = _inputs(2, 3, 10, 2)
    labels.fill_(IGNORE)
    out = per_domain_cross_entropy(logits, labels, domains, 2, backend="torch")
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert torch.count_nonzero(leaf.grad) == 0
    assert out.tokens_per_domain.tolist() == [0, 0]
    assert out.loss_sum_per_domain.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("change, message", [
    (dict(num_domains=0), "num_domains"),
    (dict(labels=torch.zeros(2, 4, dtype=torch.long)), "labels shape"),
    (dict(labels=torch.zeros(2, 3)), "integer"),
    (dict(domain_ids=torch.zeros(3, dtype=torch.long)), "domain_ids shape"),
    (dict(domain_ids=torch.tensor([0, 7])), "outside \\[0, 2\\)"),
    (dict(labels=torch.tensor([[0, 1, 10], [0, IGNORE, 2]])), "label\\(s\\) are outside"),
    (dict(backend="cuda"), "backend must be one of"),
    (dict(logits=torch.zeros(2, 3, 4, 10)), "logits must be"),
])
def test_bad_input_raises_value_error_saying_what_to_fix(change, message):
    kwargs = dict(logits=torch.zeros(2, 3, 10), labels=torch.zeros(2, 3, dtype=torch.long),
                  domain_ids=torch.tensor([0, 1]), num_domains=2, backend="torch")
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        per_domain_cross_entropy(**kwargs)


def test_unchecked_out_of_range_domain_is_left_out_of_tallies():
    _, logits, labels, _ = _inputs(2, 4, 10, 2, ignored_fraction=0.0)
    out = per_domain_cross_entropy(logits, labels, torch.tensor([1, 9]), 2, backend="torch",
                                   check_values=False)
    assert out.tokens_per_domain.tolist() == [0, 4]
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits.reshape(-1, 10),
                                                            labels.reshape(-1)).item())


def test_backend_choice_on_cpu():
    assert dl._resolve_backend("auto", torch.device("cpu")) == "torch"
    assert dl._resolve_backend("torch", torch.device("cpu")) == "torch"
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process lets the kernel run on CPU")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run"):
        dl._resolve_backend("triton", torch.device("cpu"))


_WITHOUT_TRITON = """
import sys, torch
sys.modules["triton"] = None  # makes `import triton` raise ImportError
from autoscale_ds.train import domain_loss_triton as kernels  # importing must still work
from autoscale_ds.train.domain_loss import per_domain_cross_entropy
logits, zeros = torch.zeros(1, 4), torch.zeros(1, dtype=torch.long)
try:
    kernels.fused_forward(logits, zeros, zeros, 1, -100)
except ImportError as error:
    print("ImportError:", error)
try:
    per_domain_cross_entropy(logits, zeros, zeros, 1, backend="triton")
except RuntimeError as error:
    print("RuntimeError:", error)
print("auto:", per_domain_cross_entropy(logits, zeros, zeros, 1).loss.item())
"""


def test_without_triton_the_kernel_module_imports_and_explains_on_use():
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TRITON], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ImportError: triton is not importable")
    assert "pip install" in lines[0]
    assert lines[1].startswith("RuntimeError: backend='triton' cannot run: triton is not")
    assert float(lines[2].split()[1]) == pytest.approx(math.log(4))


def test_apex_probe_never_raises(monkeypatch):
    assert isinstance(apex_available(), bool)

    def broken(name, *args):
        raise RuntimeError(f"broken install of {name}")
    monkeypatch.setattr(dl.importlib.util, "find_spec", broken)
    assert apex_available() is False


# ---------------------------------------------------------------- kernel vs reference

# name -> inputs and the forced block size (small blocks make several blocks per row)
INTERPRETER_CASES = {
    "vocab_not_multiple_of_block": dict(shape=(3, 5, 100, 4), block=32),
    "several_blocks": dict(shape=(2, 4, 1000, 3), block=128),
    "one_block_exact": dict(shape=(2, 3, 64, 2), block=64),
    "bf16": dict(shape=(2, 4, 300, 3), block=64, dtype="bfloat16"),
    "fp16": dict(shape=(2, 4, 300, 3), block=64, dtype="float16"),
    "per_token_2d_empty_domain": dict(shape=(1, 12, 77, 5), block=16, per_sample=False,
                                      absent_domain=2, flat=True),
    "strided_slice_large_logits": dict(shape=(2, 4, 150, 3), block=32, strided=True,
                                       logit_scale=60.0),
    "first_block_all_neg_inf": dict(shape=(2, 3, 70, 2), block=16, masked_prefix=20),
    "all_ignored": dict(shape=(2, 3, 50, 2), block=16, ignored_fraction=1.1),
    "grad_scale_3": dict(shape=(2, 3, 90, 2), block=32, grad_scale=3.0),
}


def _interpret_case(name: str, spec: dict) -> dict:
    """Kernel vs reference for one case; runs inside the TRITON_INTERPRET=1 subprocess."""
    from autoscale_ds.train import domain_loss_triton as kernels
    batch, seq, vocab, num_domains = spec["shape"]
    leaf, logits, labels, domains = _inputs(
        batch, seq, vocab, num_domains, seed=zlib.crc32(name.encode()),
        dtype=getattr(torch, spec.get("dtype", "float32")),
        per_sample=spec.get("per_sample", True), strided=spec.get("strided", False),
        ignored_fraction=spec.get("ignored_fraction", 0.25),
        logit_scale=spec.get("logit_scale", 3.0), absent_domain=spec.get("absent_domain"),
        masked_prefix=spec.get("masked_prefix", 0))
    if spec.get("flat"):
        logits, labels, domains = logits.reshape(-1, vocab), labels.reshape(-1), domains.reshape(-1)
    kernels.MAX_BLOCK_V = spec["block"]
    results = {}
    for backend in ("triton", "torch"):
        out = per_domain_cross_entropy(logits, labels, domains, num_domains, backend=backend)
        (grad,) = torch.autograd.grad(out.loss * spec.get("grad_scale", 1.0), leaf)
        results[backend] = (out, grad)
    (fused, fused_grad), (ref, ref_grad) = results["triton"], results["torch"]
    return {
        "loss": [fused.loss.item(), ref.loss.item()],
        "sums_err": (fused.loss_sum_per_domain - ref.loss_sum_per_domain).abs().max().item(),
        "sums_scale": ref.loss_sum_per_domain.abs().max().item(),
        "tokens": [fused.tokens_per_domain.tolist(), ref.tokens_per_domain.tolist()],
        "tokens_dtype": str(fused.tokens_per_domain.dtype),
        "grad_dtype_ok": fused_grad.dtype == leaf.dtype,
        "grad_err": (fused_grad.float() - ref_grad.float()).abs().max().item(),
        "grad_scale": ref_grad.float().abs().max().item(),
        "grad_finite": bool(torch.isfinite(fused_grad.float()).all()),
        "dtype": spec.get("dtype", "float32"),
    }


@pytest.fixture(scope="module")
def interpreted():
    proc = subprocess.run([sys.executable, __file__, "--interpret-cases"],
                          env=_env(TRITON_INTERPRET="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    return report


@pytest.mark.parametrize("case", sorted(INTERPRETER_CASES))
def test_kernel_matches_reference_under_interpreter(interpreted, case):
    got = interpreted[case]
    low_precision = got["dtype"] != "float32"
    fused_loss, ref_loss = got["loss"]
    assert fused_loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert got["sums_err"] <= 1e-5 * max(got["sums_scale"], 1.0)
    assert got["tokens"][0] == got["tokens"][1]
    assert got["tokens_dtype"] == "torch.int64"
    assert got["grad_dtype_ok"] and got["grad_finite"]
    # both paths compute in fp32 and round the gradient once to the logits' dtype
    tolerance = 1e-2 if low_precision else 1e-5
    assert got["grad_err"] <= tolerance * max(got["grad_scale"], 1e-6)


def test_interpreter_edge_cases_are_exercised(interpreted):
    assert interpreted["all_ignored"]["loss"] == [0.0, 0.0]
    assert interpreted["all_ignored"]["grad_scale"] == 0.0
    assert sum(interpreted["all_ignored"]["tokens"][0]) == 0
    assert interpreted["per_token_2d_empty_domain"]["tokens"][0][2] == 0


def _run_interpreter_cases() -> None:
    try:
        import triton  # noqa: F401  (imported first, under TRITON_INTERPRET=1)
    except ImportError as error:
        print(json.dumps({"skip": f"triton is not importable: {error}"}))
        return
    cases = INTERPRETER_CASES.items()
    print(json.dumps({name: _interpret_case(name, spec) for name, spec in cases}))


# ---------------------------------------------------------------- across ranks

def _local_domain_loss(rank: int) -> DomainLoss:
    _, logits, labels, domains = _inputs(2 + rank, 4, 30, 4, seed=100 + rank)
    return per_domain_cross_entropy(logits, labels, domains, 4, backend="torch")


def _dist_worker(out_path: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo")
    local = _local_domain_loss(dist.get_rank())
    reduced = reduce_across_ranks(local)
    Path(out_path).write_text(json.dumps({
        "sums": reduced.loss_sum_per_domain.tolist(), "tokens": reduced.tokens_per_domain.tolist(),
        "sums_dtype": str(reduced.loss_sum_per_domain.dtype),
        "tokens_dtype": str(reduced.tokens_per_domain.dtype)}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_reduce_across_ranks_sums_two_gloo_ranks(tmp_path):
    base = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, __file__, "--dist-worker",
                               str(tmp_path / f"rank{rank}.json")],
                              env={**base, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    try:
        errors = [proc.communicate(timeout=180)[1] for proc in procs]
    finally:  # a hung rendezvous must not leave workers behind
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(errors)[-4000:]
    expected = [_local_domain_loss(rank) for rank in range(2)]
    expected_sums = (expected[0].loss_sum_per_domain + expected[1].loss_sum_per_domain).tolist()
    expected_tokens = (expected[0].tokens_per_domain + expected[1].tokens_per_domain).tolist()
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["sums"] == pytest.approx(expected_sums, rel=1e-6)
        assert got["tokens"] == expected_tokens
        assert (got["sums_dtype"], got["tokens_dtype"]) == ("torch.float32", "torch.int64")


def test_reduce_is_a_no_op_without_process_group():
    # In a fresh interpreter: a test that trained in this process leaves DeepSpeed's
    # one-process group up (DeepSpeed caches it, so it cannot be torn down and rebuilt).
    code = ("import torch, torch.distributed as dist\n"
            "from autoscale_ds.train.domain_loss import DomainLoss, reduce_across_ranks\n"
            "local = DomainLoss(torch.tensor(1.5), torch.tensor([2.0, 0.0]), torch.tensor([3, 0]))\n"
            "assert not dist.is_initialized()\n"
            "assert reduce_across_ranks(local) is local\n"
            "print('identity')\n")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "identity"


# ---------------------------------------------------------------- tracker

def _step(sums, tokens):
    return DomainLoss(torch.tensor(0.0), torch.tensor(sums, dtype=torch.float32),
                      torch.tensor(tokens, dtype=torch.int64))


def test_tracker_averages_and_empty_domain_is_none():
    tracker = DomainLossTracker(3)
    tracker.update(_step([2.0, 0.0, 9.0], [1, 0, 3]))
    tracker.update(_step([4.0, 0.0, 3.0], [2, 0, 1]))
    assert tracker.mean_loss_per_domain() == {0: 2.0, 1: None, 2: 3.0}
    ppl = tracker.perplexity_per_domain()
    assert ppl[0] == pytest.approx(math.exp(2.0)) and ppl[1] is None
    assert tracker.tokens_per_domain() == {0: 3, 1: 0, 2: 4}
    tracker.update(_step([1e6, 0.0, 0.0], [1, 0, 0]))
    assert tracker.perplexity_per_domain()[0] == math.inf  # overflow is inf, not a crash
    tracker.reset()
    assert tracker.mean_loss_per_domain() == {0: None, 1: None, 2: None}


def test_tracker_state_dict_round_trip_continues_the_same_averages():
    steps = [_step([1.5, 2.0], [3, 4]), _step([0.5, 7.0], [1, 2]), _step([2.0, 0.0], [2, 0])]
    straight = DomainLossTracker(2)
    for step in steps:
        straight.update(step)
    first = DomainLossTracker(2)
    first.update(steps[0])
    saved = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = DomainLossTracker(2)
    resumed.load_state_dict(saved)
    for step in steps[1:]:
        resumed.update(step)
    assert resumed.state_dict() == straight.state_dict()
    assert resumed.mean_loss_per_domain() == straight.mean_loss_per_domain()


def test_tracker_rejects_mismatched_domains():
    tracker = DomainLossTracker(2)
    with pytest.raises(ValueError, match="same num_domains"):
        tracker.update(_step([1.0, 2.0, 3.0], [1, 1, 1]))
    with pytest.raises(ValueError, match="same domain list"):
        tracker.load_state_dict(DomainLossTracker(3).state_dict())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--interpret-cases"]:
        _run_interpreter_cases()
    elif sys.argv[1:2] == ["--dist-worker"]:
        _dist_worker(sys.argv[2])
    else:
        sys.exit("usage: test_domain_loss.py --interpret-cases | --dist-worker OUT.json")
