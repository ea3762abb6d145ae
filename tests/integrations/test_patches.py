"""patches/: well-formed unified diffs with a header naming the upstream commit, a check script
that fails loudly, and the mixture -> blend -> per-domain loss math the patches run.

Whether the patches apply is checked against real checkouts only: set AUTOSCALE_MEGATRON_LM
and/or AUTOSCALE_MEGATRON_DEEPSPEED to a Megatron-LM / Megatron-DeepSpeed checkout (e.g. at
the commit named in the patch header); without them those tests skip.
"""

import json
import os
import re
import shutil
import subprocess
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

from autoscale_ds.formats.datapaths import data_paths_from_mapping
from autoscale_ds.formats.schemas import Mixture, save_mixture
from autoscale_ds.integrations.megatron import blend_domains, blend_from_mixture

PATCHES = Path(__file__).resolve().parents[2] / "patches"
CHECK = PATCHES / "check_patches.sh"
FRAMEWORKS = {  # directory -> (upstream repository, files a patch may touch, checkout variable)
    "megatron-lm": ("NVIDIA/Megatron-LM", {"pretrain_gpt.py"}, "AUTOSCALE_MEGATRON_LM"),
    "megatron-deepspeed": ("microsoft/Megatron-DeepSpeed", {"pretrain_gpt.py", "megatron/training.py"},
                           "AUTOSCALE_MEGATRON_DEEPSPEED"),
}
PATCH_NAME = "0001-autoscale-mixture-and-domain-loss.patch"
HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _patch(framework):
    return (PATCHES / framework / PATCH_NAME).read_text(encoding="utf-8")


def _parse(text):
    """(header lines, {file: (added, removed)}), checking every hunk's line counts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("diff --git "))
    files, i = {}, start
    while i < len(lines):
        m = re.fullmatch(r"diff --git a/(\S+) b/(\S+)", lines[i])
        assert m and m.group(1) == m.group(2), f"line {i + 1}: expected 'diff --git a/X b/X'"
        name, i = m.group(1), i + 1
        while i < len(lines) and not lines[i].startswith("--- "):
            assert lines[i].startswith(("index ", "new file mode", "old mode", "new mode")), lines[i]
            i += 1
        assert lines[i] == f"--- a/{name}" and lines[i + 1] == f"+++ b/{name}", lines[i:i + 2]
        i, added, removed = i + 2, 0, 0
        while i < len(lines) and lines[i].startswith("@@"):
            i, counts = _hunk(lines, i)
            added, removed = added + counts[0], removed + counts[1]
        files[name] = (added, removed)
    return lines[:start], files


def _hunk(lines, i):
    m = HUNK.match(lines[i])
    assert m, f"bad hunk header {lines[i]!r}"
    old_left, new_left = int(m.group(2) or 1), int(m.group(4) or 1)
    added = removed = 0
    i += 1
    while old_left or new_left:
        tag = lines[i][:1]
        assert tag in (" ", "-", "+"), f"line {i + 1}: {lines[i]!r} inside a hunk"
        old_left -= tag in (" ", "-")
        new_left -= tag in (" ", "+")
        added, removed, i = added + (tag == "+"), removed + (tag == "-"), i + 1
    assert old_left == 0 and new_left == 0, "hunk line counts do not match its header"
    return i, (added, removed)


def _added_function(text, name):
    """Source of a function the patch adds (with its decorator), from its '+' lines."""
    added = [line[1:] for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]
    start = next(i for i, line in enumerate(added) if line.startswith(f"def {name}("))
    start -= added[start - 1].startswith("@")
    end = start + 2
    while end < len(added) and (added[end].startswith(" ") or not added[end].strip()):
        end += 1
    return "\n".join(added[start:end])


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_patch_is_a_unified_diff_with_a_header(framework):
    repo, allowed, _ = FRAMEWORKS[framework]
    header, files = _parse(_patch(framework))
    assert set(files) <= allowed and "pretrain_gpt.py" in files
    assert sum(a + r for a, r in files.values()) < 150, "keep the patch small"
    # git apply ignores text before the first 'diff --git' unless a line looks like a diff.
    assert all(line.startswith("#") or not line.strip() for line in header)
    text = "\n".join(header)
    assert f"https://github.com/{repo}" in text
    assert re.search(r"^# Commit: +[0-9a-f]{40}\b", text, re.M), "header must name the 40-hex commit"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_patch_adds_the_flags_blend_and_domain_loss(framework):
    added = "\n".join(line for line in _patch(framework).splitlines() if line.startswith("+"))
    for needed in ("--autoscale-mixture", "--autoscale-data-paths", "blend_from_mixture(",
                   "blend_domains(", "lm loss/"):
        assert needed in added
    # Each repository's blended dataset names the source of a sample differently.
    assert ("'dataset_idx'" if framework == "megatron-deepspeed" else "'dataset_id'") in added


def test_readme_names_the_commits():
    readme = (PATCHES / "README.md").read_text(encoding="utf-8")
    for framework in FRAMEWORKS:
        commit = re.search(r"^# Commit: +([0-9a-f]{40})", _patch(framework), re.M).group(1)
        assert commit in readme


# ----------------------------------------------------------------------------- check script


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_patch_applies_to_checkout(framework):
    variable = FRAMEWORKS[framework][2]
    checkout = os.environ.get(variable)
    if not checkout:
        pytest.skip(f"set {variable} to a {FRAMEWORKS[framework][0]} checkout to check the patch applies")
    result = subprocess.run(["bash", str(CHECK), checkout, framework], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^(OK|APPLIED) +{framework}/{PATCH_NAME}", result.stdout, re.M)


def test_check_script_refuses_what_is_not_a_checkout(tmp_path):
    missing = subprocess.run(["bash", str(CHECK), str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    empty = subprocess.run(["bash", str(CHECK), str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode == 2 and "has no pretrain_gpt.py" in empty.stderr


def test_check_script_reports_a_patch_that_does_not_apply(tmp_path):
    # A pretrain_gpt.py that is not upstream's: the check must fail, name the patch, exit 1.
    (tmp_path / "pretrain_gpt.py").write_text("print('not Megatron')\n")
    command = ["bash", str(CHECK), str(tmp_path), "megatron-lm"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert f"FAIL    megatron-lm/{PATCH_NAME} does not apply" in result.stdout


# ----------------------------------------------------------------------------- the math


MAP = {"web": "s3://b/web", "code": {"s3://b/code_a": 3, "s3://b/code_b": 1}, "books": "s3://b/books",
       "math": "s3://b/math"}
WEIGHTS = {"web": 0.5, "code": 0.3, "books": 0.2, "math": 0.0}


def test_mixture_to_blend_math():
    paths = data_paths_from_mapping(MAP)
    prefixes, weights = blend_from_mixture(WEIGHTS, paths)  # what both patches call
    assert prefixes == ["s3://b/web", "s3://b/code_a", "s3://b/code_b", "s3://b/books"]
    assert weights == pytest.approx([0.5, 0.225, 0.075, 0.2], abs=1e-15)  # weight x share, math dropped
    assert blend_domains(prefixes, paths) == ["web", "code", "code", "books"]
    # Megatron-DeepSpeed gets the blend as --data-path strings; repr round-trips exactly.
    flat = [tok for p, w in zip(prefixes, weights) for tok in (repr(w), p)]
    assert [float(x) for x in flat[0::2]] == weights and flat[1::2] == prefixes


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_patch_domain_loss_math(framework, tmp_path):
    torch = pytest.importorskip("torch")
    text = _patch(framework)
    namespace = {"torch": torch, "lru_cache": lru_cache}
    exec(_added_function(text, "_autoscale_blend"), namespace)  # noqa: S102 - the patch's own code
    exec(_added_function(text, "_autoscale_domain_sums"), namespace)  # noqa: S102
    mixture = Mixture.from_tokens({d: 1e6 * w for d, w in WEIGHTS.items()}, "ddo")
    save_mixture(tmp_path / "mixture.json", mixture)
    (tmp_path / "paths.json").write_text(json.dumps(MAP))
    paths = data_paths_from_mapping(MAP)
    # Called, as in the patch, with the two file names given on the command line.
    blend, names, of_dataset = namespace["_autoscale_blend"](str(tmp_path / "mixture.json"),
                                                            str(tmp_path / "paths.json"))
    assert names == ["web", "code", "books"] and of_dataset.tolist() == [0, 1, 1, 2]
    if framework == "megatron-deepspeed":
        assert blend[1::2] == blend_from_mixture(WEIGHTS, paths)[0]
    else:
        assert blend == blend_from_mixture(WEIGHTS, paths)

    gen = torch.Generator().manual_seed(0)
    batch, seq = 6, 5
    losses = torch.rand(batch, seq, generator=gen, requires_grad=True)
    loss_mask = (torch.rand(batch, seq, generator=gen) > 0.2).float()
    dataset_id = torch.tensor([0, 1, 2, 3, 1, 0], dtype=torch.int16)  # as BlendedDataset collates
    sums = namespace["_autoscale_domain_sums"](losses, loss_mask, dataset_id, of_dataset, len(names))
    assert sums.shape == (3, 2) and not sums.requires_grad
    for d in range(3):
        rows = [b for b in range(batch) if of_dataset[int(dataset_id[b])] == d]
        expected = float((losses.detach()[rows] * loss_mask[rows]).sum())
        assert float(sums[d, 0]) == pytest.approx(expected, rel=1e-6)
        assert float(sums[d, 1]) == float(loss_mask[rows].sum())
    assert float(sums[:, 1].sum()) == float(loss_mask.sum())  # every token counted once


def test_both_patches_share_the_domain_loss_code():
    texts = [_added_function(_patch(f), "_autoscale_domain_sums") for f in FRAMEWORKS]
    assert texts[0] == texts[1]


# ----------------------------------------------------------------------------- Megatron-DeepSpeed's training.py
#
# The patch's megatron/training.py hunks run inside upstream functions (train_step, training_log,
# evaluate). These tests execute the hunks' own lines, taken from the patch text, inside minimal
# stand-ins for those functions; with a checkout (AUTOSCALE_MEGATRON_DEEPSPEED) the patched
# upstream functions themselves run further below.

TRAINING = "megatron/training.py"
DOMAINS = ("web", "code", "books")


def _hunks(text, path):
    """[(header, new-side lines, added lines)] of the hunks the patch makes to ``path``."""
    lines, hunks, current = text.splitlines(), [], None
    for line in lines[lines.index(f"+++ b/{path}") + 1:]:
        if line.startswith("diff --git "):
            break
        if line.startswith("@@"):
            current = (line, [], [])
            hunks.append(current)
        elif line[:1] in (" ", "+"):
            current[1].append(line[1:])
            if line[:1] == "+":
                current[2].append(line[1:])
    return hunks


def _block(lines, first, last):
    """Lines from the one starting with ``first`` (stripped) through the next starting with
    ``last``, dedented: a whole statement of upstream code with the patch's lines inside."""
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith(last))
    return textwrap.dedent("\n".join(lines[start:end + 1]))


def _training_namespace(torch):
    """The patch text, and its helpers (the first hunk adds them at module level) defined."""
    text = _patch("megatron-deepspeed")
    namespace = {"torch": torch}
    exec("\n".join(_hunks(text, TRAINING)[0][2]), namespace)  # noqa: S102 - the patch's own code
    assert {"_autoscale_is_pair", "_autoscale_means", "_autoscale_log_step"} <= set(namespace)
    return text, namespace


def _train_step_reductions(torch):
    """One stand-in per train_step hunk (DeepSpeed path, then the path without --deepspeed): the
    hunk's micro-batch loop, unchanged, in a function that returns its loss_reduced."""
    text, namespace = _training_namespace(torch)
    reductions = []
    for header, new_side, _ in _hunks(text, TRAINING):
        if "for key in losses_reduced[0]:" not in "\n".join(new_side):
            continue
        loop = _block(new_side, "for key in losses_reduced[0]:", "return loss_reduced")
        source = ("def reduce(losses_reduced):\n    skipped_iter = grad_norm = num_zeros_in_grad = None\n"
                  "    loss_reduced = {}\n" + textwrap.indent(loop, "    "))
        exec(source, namespace)  # noqa: S102
        reductions.append(namespace.pop("reduce"))
    return reductions


def _micro_batches(torch, seed, missing=()):
    """Loss dicts of 3 micro-batches as pretrain_gpt.py reports them: 'lm loss' a scalar, each
    domain [loss sum, token count] (count 0: the domain is not in that micro-batch)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(3):
        report = {"lm loss": torch.rand(1, generator=gen)[0] + 2.0}
        for domain in DOMAINS:
            tokens = 0.0 if domain in missing else float(torch.randint(1, 50, (1,), generator=gen))
            report[f"lm loss/{domain}"] = torch.tensor([(3.0 + torch.rand(1, generator=gen).item()) * tokens, tokens])
        batches.append(report)
    return batches


def test_mds_train_step_hunks_reduce_every_domain_key():
    """Both train_step paths (with and without --deepspeed) sum every domain's [sum, count] over
    the micro-batches; 'lm loss' keeps upstream's mean. A hunk whose added `if` sat outside the
    key loop would touch only the last key."""
    torch = pytest.importorskip("torch")
    reductions = _train_step_reductions(torch)
    assert len(reductions) == 2, "expected the DeepSpeed and the non-DeepSpeed train_step hunks"
    micro = _micro_batches(torch, seed=1, missing=("books",))
    for reduce in reductions:
        reduced, *_ = reduce(micro)
        assert set(reduced) == {"lm loss", *(f"lm loss/{d}" for d in DOMAINS)}
        assert float(reduced["lm loss"]) == pytest.approx(sum(float(m["lm loss"]) for m in micro) / 3)
        for domain in DOMAINS:
            key = f"lm loss/{domain}"
            assert reduced[key].tolist() == pytest.approx(sum(m[key] for m in micro).tolist()), key


def _training_log_stand_in(namespace, added):
    """Upstream training_log's loss handling, reduced to what the hunk meets: the interval sum
    of every loss, the hunk's lines, the per-step writers, and on a logging step the log line
    (interval sum / advanced steps, shown when > 0) and the reset."""
    source = textwrap.dedent('''
        def training_log(loss_dict, total_loss_dict, iteration, args, written, logged):
            advanced_iters_key = 'advanced iterations'
            total_loss_dict[advanced_iters_key] = total_loss_dict.get(advanced_iters_key, 0) + 1
            for key in loss_dict:
                total_loss_dict[key] = total_loss_dict.get(key, torch.tensor([0.0])) + loss_dict[key]
        {added}
            written.append({key: float(value) for key, value in loss_dict.items()})  # 1 element each
            if iteration % args.log_interval == 0:
                for key in [k for k in total_loss_dict if k != advanced_iters_key]:
                    avg = total_loss_dict[key].item() / float(max(1, total_loss_dict[advanced_iters_key]))
                    if avg > 0.0:
                        logged[key] = avg
                    total_loss_dict[key] = torch.tensor([0.0])
                total_loss_dict[advanced_iters_key] = 0
        ''').replace("{added}", textwrap.indent("\n".join(added), "    "))
    exec(source, namespace)  # noqa: S102
    return namespace["training_log"]


def test_mds_training_log_hunk_logs_token_weighted_means_across_a_missing_domain():
    """Three steps in a log interval, 'books' absent from the second: every value the per-step
    writers get is one number, the step without books writes no books point, and the log line
    shows every domain's token-weighted mean over the interval (not nan)."""
    from types import SimpleNamespace

    torch = pytest.importorskip("torch")
    text, namespace = _training_namespace(torch)
    [hunk] = [h for h in _hunks(text, TRAINING) if "def training_log(" in h[0]]
    added = textwrap.dedent("\n".join(hunk[2])).splitlines()
    training_log = _training_log_stand_in(namespace, added)
    reduce = _train_step_reductions(torch)[1]  # the path without --deepspeed
    args, total, written, logged = SimpleNamespace(log_interval=3), {}, [], {}
    steps = [reduce(_micro_batches(torch, seed, missing))[0]
             for seed, missing in ((10, ()), (11, ("books",)), (12, ()))]
    for iteration, loss_dict in enumerate(steps, start=1):
        training_log(dict(loss_dict), total, iteration, args, written, logged)

    assert [sorted(w) for w in written] == [sorted(steps[0]), sorted(set(steps[1]) - {"lm loss/books"}),
                                            sorted(steps[2])]
    for step, values in zip(steps, written):
        for key, value in values.items():
            expected = step[key][0] / step[key][1] if key.startswith("lm loss/") else step[key]
            assert value == pytest.approx(float(expected))
    assert sorted(logged) == sorted(steps[0])
    for domain in DOMAINS:
        key = f"lm loss/{domain}"
        loss_sum, tokens = (sum(float(s[key][i]) for s in steps) for i in (0, 1))
        assert logged[key] == pytest.approx(loss_sum / tokens, rel=1e-6), key
    assert logged["lm loss"] == pytest.approx(sum(float(s["lm loss"]) for s in steps) / 3)
    assert all(float(v.sum()) == 0.0 for k, v in total.items() if k.startswith("lm loss"))  # reset


def test_mds_evaluate_hunk_divides_the_sums_and_drops_a_domain_without_tokens():
    torch = pytest.importorskip("torch")
    text, namespace = _training_namespace(torch)
    [hunk] = [h for h in _hunks(text, TRAINING) if "def evaluate(" in h[0]]
    [added] = hunk[2]
    micro = _micro_batches(torch, seed=3, missing=("books",)) + _micro_batches(torch, seed=4, missing=("books",))
    total = {}
    for loss_dict in micro:  # what evaluate sums over eval iterations and micro-batches ...
        for key in loss_dict:
            total[key] = total.get(key, torch.tensor([0.0])) + loss_dict[key]
    for key in total:  # ... and divides by their number
        total[key] /= len(micro)
    namespace["total_loss_dict"] = total
    exec(added.strip(), namespace)  # noqa: S102
    result = namespace["total_loss_dict"]
    assert sorted(result) == ["lm loss", "lm loss/code", "lm loss/web"]
    for key in ("lm loss/code", "lm loss/web"):
        loss_sum, tokens = (sum(float(m[key][i]) for m in micro) for i in (0, 1))
        assert result[key].numel() == 1 and float(result[key]) == pytest.approx(loss_sum / tokens, rel=1e-6)


class _Flags:
    """Megatron's args: the flags a test sets, every other one off (0)."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __getattr__(self, name):
        return 0


class _Unknown(dict):
    """Builtins for the extracted upstream functions: a name the test does not provide (a timer,
    a print helper, a DeepSpeed object) is a MagicMock, so only the loss handling is real."""

    def __missing__(self, name):
        from unittest.mock import MagicMock

        return MagicMock(name=name)


def _patched_training(checkout, tmp_path):
    """Source of the loss-handling functions of the checkout's megatron/training.py, patched
    (in a copy)."""
    import ast

    copy = tmp_path / "checkout"
    (copy / "megatron").mkdir(parents=True)
    shutil.copy2(Path(checkout) / TRAINING, copy / TRAINING)
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path))
    done = subprocess.run(["git", "apply", f"--include={TRAINING}", str(PATCHES / "megatron-deepspeed" / PATCH_NAME)],
                          cwd=copy, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    source = (copy / TRAINING).read_text(encoding="utf-8")
    # training_log writes TensorBoard/W&B points through upstream's interop_tool_logger: it runs
    # for real, so the test's writer sees exactly what TensorBoard would.
    wanted = {"_autoscale_is_pair", "_autoscale_means", "_autoscale_log_step", "train_step", "training_log",
              "evaluate", "InteropLoggingTool", "interop_tool_logger"}
    nodes = [node for node in ast.parse(source).body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted]
    assert {node.name for node in nodes} == wanted
    return "\n\n".join(ast.get_source_segment(source, node) for node in nodes)


def test_patched_megatron_deepspeed_training_runs_on_cpu(tmp_path):
    """Upstream train_step (both paths), training_log over a log interval in which one domain
    misses a step, and evaluate, as patched, on CPU tensors with the rest stood in for."""
    from enum import Enum
    from types import SimpleNamespace
    from unittest.mock import MagicMock
    import builtins

    checkout = os.environ.get("AUTOSCALE_MEGATRON_DEEPSPEED")
    if not checkout:
        pytest.skip("set AUTOSCALE_MEGATRON_DEEPSPEED to a microsoft/Megatron-DeepSpeed checkout to run "
                    "the patched megatron/training.py")
    torch = pytest.importorskip("torch")
    code = _patched_training(checkout, tmp_path)

    batches = iter([])
    logged, scalars = [], []
    args = _Flags(deepspeed=False, micro_batch_size=1, data_parallel_size=1, seq_length=8, train_iters=3,
                  log_interval=3, tensorboard_log_interval=1, eval_iters=2, consumed_train_samples=0,
                  consumed_train_tokens=0, consumed_valid_samples=0, world_size=1, iteration=0)
    writer = SimpleNamespace(add_scalar=lambda tag, value, step: scalars.append((tag, float(value), step)))
    optimizer = MagicMock(name="optimizer")
    optimizer.step.return_value = (True, 1.0, 0)
    mpu = MagicMock(name="mpu")
    mpu.get_data_parallel_world_size.return_value = 1
    timers = MagicMock(name="timers")
    timers.return_value.elapsed.return_value = 1.0
    namespace = {
        "__builtins__": _Unknown(builtins.__dict__), "torch": torch, "get_args": lambda: args,
        "get_timers": lambda: timers, "get_num_microbatches": lambda: 3, "mpu": mpu, "wandb": None,
        "get_forward_backward_func": lambda: (lambda **kwargs: next(batches)),
        "get_accelerator": lambda: SimpleNamespace(FloatTensor=lambda values: torch.tensor(values)),
        "get_tensorboard_writer": lambda: writer, "get_wandb_writer": lambda: None, "Enum": Enum,
        "print_rank_last": logged.append,
        "throughput_calculator": lambda *a, **k: (1.0, 1.0, 1.0), "is_last_rank": lambda: True}
    exec(code, namespace)  # noqa: S102 - upstream code as patched
    config = SimpleNamespace(timers=None)

    def train_step(micro, deepspeed):
        nonlocal batches
        batches, args.deepspeed = iter([micro]), deepspeed
        return namespace["train_step"](None, None, [MagicMock(name="model")], optimizer, MagicMock(), config)[0]

    micro = _micro_batches(torch, seed=1, missing=("books",))
    for deepspeed in (True, False):
        reduced = train_step(micro, deepspeed)
        for domain in DOMAINS:
            key = f"lm loss/{domain}"
            assert reduced[key].tolist() == pytest.approx(sum(m[key] for m in micro).tolist()), (deepspeed, key)

    total, steps = {}, []
    for iteration, (seed, missing) in enumerate(((10, ()), (11, ("books",)), (12, ())), start=1):
        steps.append(train_step(_micro_batches(torch, seed, missing), deepspeed=False))
        namespace["training_log"](dict(steps[-1]), total, 1e-3, iteration, 1.0, False, 0, 1.0, None, 0)
    [line] = logged
    for domain in DOMAINS:
        key = f"lm loss/{domain}"
        shown = float(re.search(rf" {re.escape(key)}: (\S+) \|", line).group(1))
        loss_sum, tokens = (sum(float(s[key][i]) for s in steps) for i in (0, 1))
        assert shown == pytest.approx(loss_sum / tokens, rel=1e-5), key
        points = {step: value for tag, value, step in scalars if tag == f"lm-loss-training/{key}"}
        assert sorted(points) == ([1, 3] if domain == "books" else [1, 2, 3]), key
        for step, value in points.items():  # each step's own token-weighted mean, one number
            assert value == pytest.approx(float(steps[step - 1][key][0] / steps[step - 1][key][1]), rel=1e-6)
    assert sorted(step for tag, _, step in scalars if tag == "lm-loss-training/lm loss") == [1, 2, 3]

    eval_batches = [_micro_batches(torch, 20, ("books",)), _micro_batches(torch, 21, ("books",))]  # eval_iters=2
    batches = iter(eval_batches)
    result, _ = namespace["evaluate"](None, None, [MagicMock(name="model")], None, config)
    assert sorted(result) == ["lm loss", "lm loss/code", "lm loss/web"]  # books had no token: left out
    assert all(value.numel() == 1 and torch.isfinite(value).all() for value in result.values())
    micro = [m for batch in eval_batches for m in batch]
    for key in ("lm loss/code", "lm loss/web"):
        loss_sum, tokens = (sum(float(m[key][i]) for m in micro) for i in (0, 1))
        assert float(result[key]) == pytest.approx(loss_sum / tokens, rel=1e-6), key
    assert float(result["lm loss"]) == pytest.approx(sum(float(m["lm loss"]) for m in micro) / len(micro))
