"""autoscale-ds installed from its wheel (no source tree): the SLURM job templates ship inside the
package and render from there.

The wheel is built from a copy of the package's sources (so the checkout is left alone), with
this interpreter's setuptools and no network, installed with ``pip install --target`` into a
temporary directory, and imported from a directory outside the checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RENDER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import autoscale_ds
    from autoscale_ds.orchestrate.pretrain_job import write_pretrain_script
    from autoscale_ds.orchestrate.slurm import SlurmExecutor

    out = Path(sys.argv[1])
    array = SlurmExecutor(partition="gpu").render(out / "slurm", out / "runs_0.txt", 3)
    (out / "array.sbatch").write_text(array)
    write_pretrain_script(out / "pretrain.sbatch", mode="autoscale", nodes=1, gpus_per_node=0,
                          train_config=str(out / "target.yaml"), python=sys.argv[2])
    print(json.dumps({"package": autoscale_ds.__file__}))
""")


def _pip(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--no-input", "--disable-pip-version-check"],
                          capture_output=True, text=True, cwd=cwd, timeout=180,
                          env=dict(os.environ, PIP_NO_INDEX="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A --target directory holding autoscale-ds installed from a freshly built wheel."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    work = tmp_path_factory.mktemp("install")
    source = work / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "autoscale_ds", source / "autoscale_ds",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source), cwd=work)
    [wheel] = (work / "dist").glob("autoscale_ds-*.whl")
    _pip("install", "--no-deps", "--target", str(work / "site"), str(wheel), cwd=work)
    return work / "site"


def test_templates_render_from_the_installed_package(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # no checkout here or above
    elsewhere.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "python"  # stands in for the nodes' interpreter: records its argv
    recorder.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGV_FILE"\n')
    recorder.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", RENDER, str(elsewhere), str(recorder)], cwd=elsewhere,
                          env=dict(env, PYTHONPATH=str(installed)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    package = Path(json.loads(done.stdout.strip().splitlines()[-1])["package"])
    assert package.is_relative_to(installed), f"imported {package}, not the installed copy"

    for name in ("array.sbatch", "pretrain.sbatch"):
        script = elsewhere / name
        subprocess.run(["bash", "-n", str(script)], check=True)
        text = script.read_text()
        assert "{{" not in text and f"{ROOT}/launchers" not in text and f"{ROOT}/autoscale_ds" not in text, name
        assert f"export PYTHONPATH={installed}\n" in text, name  # the nodes import the same copy
    assert "#SBATCH --array=0-2" in (elsewhere / "array.sbatch").read_text()

    # The pretraining job on one node (srun and scontrol stood in for) starts torchrun on the
    # installed module: no launchers/ directory is needed.
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho node0\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    argv_file = tmp_path / "argv.txt"
    subprocess.run(["bash", str(elsewhere / "pretrain.sbatch")], check=True, cwd=elsewhere, timeout=60,
                   env=dict(env, PATH=f"{bin_dir}:{env['PATH']}", ARGV_FILE=str(argv_file), SLURM_NNODES="1",
                            SLURM_NODEID="0", SLURM_JOB_ID="7", SLURM_JOB_NODELIST="node0"))
    argv = argv_file.read_text().splitlines()
    assert argv[:2] == ["-m", "torch.distributed.run"]
    assert argv[-4:] == ["-m", "autoscale_ds.train.launch", "--config", str(elsewhere / "target.yaml")]
