"""The math, file formats, exporters and CLI must never import the training stack."""

import json
import subprocess
import sys

import pytest

PURE_MODULES = [
    "autoscale_ds", "autoscale_ds.method.fit", "autoscale_ds.method.solve", "autoscale_ds.method.ddo",
    "autoscale_ds.method.predict", "autoscale_ds.method.sensitivity", "autoscale_ds.formats.schemas",
    "autoscale_ds.method.ddo_table", "autoscale_ds.method.shrinkage", "autoscale_ds.method.noise_aware",
    "autoscale_ds.method.backtest",
    "autoscale_ds.formats.export", "autoscale_ds.formats.datapaths", "autoscale_ds.atomic",
    "autoscale_ds.errors", "autoscale_ds.tables",
    "autoscale_ds.data.indexed", "autoscale_ds.data.samples", "autoscale_ds.formats.manifest",
    "autoscale_ds.data.sources", "autoscale_ds.data.prepare", "autoscale_ds.data.builtin_corpus",
    "autoscale_ds.data.stdlib_corpus", "autoscale_ds.data.corpus_fetch",
    "autoscale_ds.data.corpus_extract",
    "autoscale_ds.train.plan", "autoscale_ds.train.presets", "autoscale_ds.train.config",
    "autoscale_ds.data.blend", "autoscale_ds.integrations.megatron",
]
HEAVY = ["torch", "deepspeed", "transformers", "triton", "megatron"]

_PROBE = """
import importlib, json, sys
for name in {modules!r}:
    importlib.import_module(name)
# The CLI builds its parser (all sub-commands registered) without the training stack too.
from autoscale_ds.cli import build_parser
build_parser()
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))
"""


def test_pure_modules_import_no_training_stack():
    code = _PROBE.format(modules=PURE_MODULES, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_probe_would_see_a_heavy_import():
    # Guard against a probe that cannot fail: importing torch directly must be detected.
    pytest.importorskip("torch")
    code = "import torch\n" + _PROBE.format(modules=["autoscale_ds.method.fit"], heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch" in json.loads(result.stdout.strip().splitlines()[-1])
