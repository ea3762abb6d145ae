"""autoscale-ds: compute-optimal data mixtures for LLM pretraining (AutoScale / DDO)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version() -> str:
    for line in (HERE / "autoscale_ds" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("no __version__ in autoscale_ds/__init__.py")


setup(
    name="autoscale-ds",
    version=read_version(),
    description="Scale-aware data mixtures (AutoScale, DDO) for DeepSpeed/Megatron pretraining",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["autoscale_ds", "autoscale_ds.*"]),
    # The SLURM job templates are read with importlib.resources: they must be in the wheel.
    package_data={"autoscale_ds.orchestrate": ["templates/*.sbatch"]},
    # The core (math, file formats, exporters, CLI) needs no torch: users run it on a laptop
    # with numbers from their cluster. Training pieces bring torch through their own extras.
    install_requires=[
        "numpy>=1.22",
        "scipy>=1.9",
        "PyYAML>=6.0",
        "matplotlib>=3.5",
        "tqdm>=4.60",
    ],
    extras_require={
        # `autoscale prepare`: train/load tokenizers, read Parquet/Arrow/datasets sources.
        "data": ["sentencepiece>=0.2", "tokenizers>=0.15", "pyarrow>=12"],
        # `autoscale prepare` on `datasets.save_to_disk` directories (Dataset / DatasetDict).
        "hf": ["datasets>=2.14"],
        # Proxy and target training: DeepSpeed engine, transformers models, TensorBoard logs.
        "train": ["deepspeed>=0.14", "transformers>=4.40", "tensorboard>=2.10"],
        "gpu": ["triton>=3.0"],
        "megatron": ["megatron-core>=0.9"],
        # A compiled loop for the blend index (data/_edf_kernel.py); without it the numpy
        # engine plans the same stream, more slowly.
        "fast": ["numba>=0.59"],
        # RegMix's regressor as in the paper (method/regmix.py); without it a ridge is fitted.
        "regmix": ["lightgbm>=4"],
        "dev": [
            "pytest>=7.0", "hypothesis>=6.0", "megatron-core>=0.9",
            "sentencepiece>=0.2", "tokenizers>=0.15", "pyarrow>=12",
            # The `hf` extra: read (and, in the tests, write) `datasets.save_to_disk` dirs.
            "datasets>=2.14",
            "deepspeed>=0.14", "transformers>=4.40", "tensorboard>=2.10",
            # The fused kernel is tested on CPU through the Triton interpreter.
            "triton>=3.0",
            # The `fast` extra: the blend index's kernel is tested against the numpy engine.
            "numba>=0.59",
            # The `regmix` extra: the LightGBM regressor is tested next to the ridge.
            "lightgbm>=4",
        ],
    },
    entry_points={"console_scripts": ["autoscale=autoscale_ds.cli:main"]},
)
