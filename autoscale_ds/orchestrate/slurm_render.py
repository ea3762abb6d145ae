"""Rendering of the packaged SLURM job templates, and the settings checks the proxy array
(:mod:`.slurm`) and the pretraining job (:mod:`.pretrain_job`) share."""

import importlib.resources
import os
import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import InputError

# The directory that holds the autoscale_ds package: a source checkout, site-packages, or a
# `pip install --target` directory.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# The job templates ship inside the package (launchers/slurm/ links to them), so an installed
# wheel finds them too; read them with importlib.resources, never through the source tree.
TEMPLATES = "templates"
# Batch jobs may start with a clean environment (--export=NONE): these travel explicitly.
PASSED_ENV = ("TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR", "HF_HOME", "HF_DATASETS_CACHE",
              "TRANSFORMERS_CACHE", "CUDA_HOME", "VIRTUAL_ENV", "MPLBACKEND")


def checked_settings(kind, settings: dict, owner: str):
    known = [f.name for f in fields(kind)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise InputError(f"{owner}: unknown setting(s) {unknown}; known: {known}")
    value = kind(**settings)
    problems = value.problems()
    if problems:
        raise InputError(f"{owner}:\n  - " + "\n  - ".join(problems))
    return value


def common_problems(settings, minimums: Dict[str, int]) -> List[str]:
    """Whole-number minimums, and the extra_sbatch and env every settings class has."""
    found = [f"{name} must be a whole number >= {low}, got {getattr(settings, name)!r}"
             for name, low in minimums.items() if isinstance(getattr(settings, name), bool)
             or not isinstance(getattr(settings, name), int) or getattr(settings, name) < low]
    options, env = settings.extra_sbatch, settings.env
    if not (isinstance(options, (list, tuple)) and all(
            isinstance(o, str) and o.startswith("-") and "\n" not in o for o in options)):
        found.append(f"extra_sbatch must be a list of sbatch options like '--account=proj', got {options!r}")
    if not (isinstance(env, dict) and all(re.fullmatch(r"[A-Za-z_]\w*", str(k)) for k in env)):
        found.append(f"env must map variable names to values, got {env!r}")
    return found


def template_text(name: str, path=None) -> Tuple[str, str]:
    """(label for messages, text) of the template file ``path``, or of the packaged ``name``."""
    if path is None:
        resource = importlib.resources.files(__package__).joinpath(TEMPLATES, name)
        return f"packaged template {name}", resource.read_text(encoding="utf-8")
    try:
        return str(path), Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"SLURM template {path}: cannot read ({exc.strerror or exc}); the "
                         f"`template` setting names a customised copy of {name}, or leave it "
                         "out to use the packaged one") from None


def render_template(name: str, values: Dict[str, object], path=None) -> str:
    """Fill the ``{{name}}`` placeholders (bash's own ``${...}`` stays untouched) of the
    template file ``path``, or of the packaged template ``name``."""
    path, text = template_text(name, path)

    def fill(match):
        if match.group(1) not in values:
            raise InputError(f"SLURM template {path}: unknown placeholder {match.group(0)}")
        return str(values[match.group(1)])
    return re.sub(r"\{\{(\w+)\}\}", fill, text)


def sbatch_lines(partition=None, time_limit=None, gpus=0, mem=None, extra: Sequence[str] = ()) -> str:
    lines = [f"--partition={partition}" if partition else "", f"--time={time_limit}" if time_limit else "",
             f"--gres=gpu:{gpus}" if gpus else "", f"--mem={mem}" if mem else "", *extra]
    return "\n".join(f"#SBATCH {line}" for line in lines if line)


def environment_exports(python: str, extra: Optional[Dict[str, str]] = None) -> str:
    """``export`` lines giving a batch job this process's package, venv tools and caches."""
    paths = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # A source checkout must win over other copies; a site-packages dir must not precede the
    # standard library, so that one is left to the interpreter.
    if not re.search(r"(site|dist)-packages", str(PACKAGE_PARENT)):
        paths.insert(0, str(PACKAGE_PARENT))
    lines = [f"export PYTHONPATH={shlex.quote(os.pathsep.join(dict.fromkeys(paths)))}"] if paths else []
    # The venv's bin first: DeepSpeed's JIT builds call ninja from PATH.
    lines.append(f'export PATH={shlex.quote(os.path.dirname(python))}"${{PATH:+:$PATH}}"')
    passed = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    for name, value in {**passed, **(extra or {})}.items():
        lines.append(f"export {name}={shlex.quote(str(value))}")
    return "\n".join(lines)
