"""README code blocks marked ``<!-- runnable -->`` must work as written."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"<!-- runnable -->\s*```bash\n(.*?)```", re.S)


def _runnable_blocks():
    return _BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_has_runnable_blocks():
    assert _runnable_blocks(), "README lost its runnable examples"


@pytest.mark.parametrize("index", range(len(_runnable_blocks())))
def test_runnable_block(index, tmp_path):
    if shutil.which("autoscale", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the autoscale console script is not installed next to this python")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MPLBACKEND="Agg")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", _runnable_blocks()[index]],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
