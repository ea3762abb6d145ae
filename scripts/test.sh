#!/usr/bin/env bash
# One command from a fresh machine to a passing test run:
#   create a virtualenv, install the project (CPU torch pinned) with its dev extra, run pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ddo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/_venv.sh
install_project dev

# The SLURM tests run a real one-node cluster on localhost; the test fixture installs and
# starts it (scripts/slurm_local.sh) where that is possible: as root with apt-get.
if [ -z "${AUTOSCALE_SLURM_SETUP:-}" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    export AUTOSCALE_SLURM_SETUP=1
fi

echo "==> running tests"
set +e
"$VENV/bin/python" -m pytest tests "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "ERROR: pytest collected no tests; that is a failure, not a pass" >&2
    exit 1
fi
exit "$status"
