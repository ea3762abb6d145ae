"""The math, file formats, exporters and CLI must never import the training stack, and
imports point one way: the CLI on top; orchestration and integrations below it; then train,
then data; the method math and the formats at the bottom, above a few base modules."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PURE_MODULES = [
    "autoscale_ds", "autoscale_ds.errors", "autoscale_ds.atomic", "autoscale_ds.loaders",
    "autoscale_ds.tables", "autoscale_ds.console", "autoscale_ds.yaml_config", "autoscale_ds.lock",
    "autoscale_ds.method.fit", "autoscale_ds.method.solve", "autoscale_ds.method.ddo",
    "autoscale_ds.method.ddo_table", "autoscale_ds.method.predict", "autoscale_ds.method.sensitivity",
    "autoscale_ds.method.shrinkage", "autoscale_ds.method.noise_aware",
    "autoscale_ds.method.backtest", "autoscale_ds.method.steps", "autoscale_ds.method.doremi",
    "autoscale_ds.method.baselines", "autoscale_ds.method.regmix",
    "autoscale_ds.formats.schemas", "autoscale_ds.formats.manifest", "autoscale_ds.formats.datapaths",
    "autoscale_ds.formats.export", "autoscale_ds.formats.export.writers",
    "autoscale_ds.formats.export.readers",
    "autoscale_ds.data.indexed", "autoscale_ds.data.samples", "autoscale_ds.data.sources",
    "autoscale_ds.data.source_tables", "autoscale_ds.data.prepare", "autoscale_ds.data.builtin_corpus",
    "autoscale_ds.data.stdlib_corpus", "autoscale_ds.data.corpus_fetch",
    "autoscale_ds.data.corpus_extract", "autoscale_ds.data.blend", "autoscale_ds.data.layout",
    "autoscale_ds.train.plan", "autoscale_ds.train.presets", "autoscale_ds.train.config",
    "autoscale_ds.integrations.megatron",
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


# ----------------------------------------------------------------------------- layering

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "autoscale_ds"
# Rank of each layer: a module may import its own layer or a lower one, never a higher one
# nor a sibling at the same rank. Top-level modules not named here are base modules (rank 0).
LAYER_RANKS = {"formats": 1, "method": 2, "data": 3, "train": 4, "integrations": 5,
               "orchestrate": 5, "cli": 6}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "__main__":  # `python -m autoscale_ds` is the CLI
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in LAYER_RANKS else "<base>"


def _module_name(package_dir: Path, file: Path) -> str:
    parts = (package_dir.name, *file.relative_to(package_dir).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list:
    """Absolute names a (possibly relative, possibly function-level) import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if not node.level:
        return [node.module]
    anchor = module.split(".")[: len(module.split(".")) - (0 if is_package else 1)]
    base = anchor[: len(anchor) - (node.level - 1)]
    if node.module:
        return [".".join(base + [node.module])]
    return [".".join(base + [alias.name]) for alias in node.names]


def layering_violations(package_dir: Path) -> list:
    """``(importer, imported)`` for every import that points up or sideways between layers."""
    violations = []
    for file in sorted(package_dir.rglob("*.py")):
        module = _module_name(package_dir, file)
        source = _layer(module)
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            for name in _imported(node, module, file.name == "__init__.py"):
                if not name.startswith(package_dir.name + "."):
                    continue
                target = _layer(name)
                if target == source or target == "<base>":
                    continue
                if source == "<base>" or LAYER_RANKS[target] >= LAYER_RANKS[source]:
                    violations.append((module, name))
    return violations


def test_imports_point_down_the_layers():
    assert layering_violations(PACKAGE_DIR) == []


def test_nothing_below_the_cli_imports_it():
    below = [(m, n) for m, n in layering_violations(PACKAGE_DIR) if _layer(n) == "cli"]
    assert below == []
    # and the rule itself names it: every layer but the top ranks below the CLI
    assert all(rank < LAYER_RANKS["cli"] for layer, rank in LAYER_RANKS.items() if layer != "cli")


@pytest.mark.parametrize("importer, statement", [
    ("data/prepare_dir.py", "from ..cli.common import writing"),
    ("train/trainer.py", "def f():\n    from autoscale_ds.orchestrate import runner\n"),
    ("formats/schemas.py", "from ..method import fit"),
    ("errors.py", "from .data import blend"),
    ("orchestrate/runner.py", "from ..integrations import megatron"),
])
def test_the_layering_check_would_see_an_upward_import(tmp_path, importer, statement):
    # Guard against a check that cannot fail: plant one bad arrow in a copy of the layout.
    package = tmp_path / "autoscale_ds"
    for layer in ("data", "train", "formats", "method", "orchestrate", "integrations", "cli"):
        (package / layer).mkdir(parents=True)
        (package / layer / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / importer).write_text(statement + "\n")
    assert len(layering_violations(package)) == 1
