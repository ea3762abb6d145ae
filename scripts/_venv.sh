# Sourced by test.sh and demo.sh: create the project's virtualenv and install into it.
# Usage: install_project EXTRAS   (e.g. install_project dev)
VENV="${AUTOSCALE_VENV:-.venv}"

install_project() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating virtualenv $VENV"
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    echo "==> installing autoscale-ds[$1] (torch pinned to the CPU build 2.13.0)"
    # torch first and pinned: an unpinned torch (pulled in by deepspeed or megatron-core) is
    # a multi-GB CUDA build.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[$1]"
    # DeepSpeed's JIT builds are cached in the repo's ignored cache dir, not rebuilt per run.
    export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
    export MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
}
