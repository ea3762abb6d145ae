"""patches/: well-formed unified diffs with a header naming the upstream commit, a check script
that fails loudly, and the mixture -> blend -> per-domain loss math the patches run.

Whether the patches apply is checked against real checkouts only: set AUTOSCALE_MEGATRON_LM
and/or AUTOSCALE_MEGATRON_DEEPSPEED to a Megatron-LM / Megatron-DeepSpeed checkout (e.g. at
the commit named in the patch header); without them those tests skip.
"""

import json
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from autoscale_ds.datapaths import data_paths_from_mapping
from autoscale_ds.formats import Mixture, save_mixture
from autoscale_ds.integrations.megatron import blend_domains, blend_from_mixture

PATCHES = Path(__file__).resolve().parent.parent / "patches"
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
