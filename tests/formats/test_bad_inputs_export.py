"""Bad inputs to `autoscale export`, replayed as a user would type them (issue 11, items 5 and 9).

Each case runs the real CLI in a subprocess and checks a clean refusal: exit 2, one
`autoscale: error:` line naming the domain and the path, no traceback, inputs unchanged, and
no command hidden in a path ever ran.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml

from badinput import refuses, run_command

WEIGHTS = {"web": 0.6, "code": 0.4}


def _inputs(tmp_path, web_path):
    mixture = tmp_path / "mixture.json"
    mixture.write_text(json.dumps({"schema": "autoscale.mixture/v1", "total_tokens": 1000,
                                   "weights": WEIGHTS, "tokens": {"web": 600, "code": 400},
                                   "method": "ddo", "provenance": {}}))
    paths = tmp_path / "paths.yaml"
    paths.write_text(yaml.safe_dump({"web": web_path, "code": "/d/code"}))
    return mixture, paths


# (format, hostile web path, what the error must say besides the domain and the path)
REFUSED = [
    pytest.param("megatron", "/d/w$(touch${IFS}MARKER)", "'$'", id="megatron-command-substitution"),
    pytest.param("megatron", "/d/`touch MARKER`", "'`'", id="megatron-backticks"),
    pytest.param("megatron", "/d/my web/a", "' '", id="megatron-space"),
    pytest.param("megatron", "/d/*", "'*'", id="megatron-glob"),
    pytest.param("megatron", "--d/x", "starts with '-'", id="megatron-leading-dashes"),
    pytest.param("megatron-deepspeed", "--d/x", "starts with '-'", id="deepspeed-leading-dashes"),
    pytest.param("megatron-data-args", "/d/line\nbreak", "whitespace", id="data-args-newline"),
    pytest.param("megatron-data-args", "/d/my web/a", "whitespace", id="data-args-space"),
]


@pytest.mark.parametrize("fmt, web_path, reason", REFUSED)
def test_export_refuses_a_path_megatron_cannot_take(tmp_path, fmt, web_path, reason):
    marker = tmp_path / "PWNED"
    web_path = web_path.replace("MARKER", str(marker))
    mixture, paths = _inputs(tmp_path, web_path)
    out = tmp_path / "out.txt"
    refuses(["export", mixture, "--format", fmt, "--data-paths", paths, "--out", out],
            names=[fmt, "'web'", repr(web_path), reason, str(paths)], inputs=[mixture, paths])
    assert not out.exists() and not marker.exists()


def test_export_refuses_a_nul_in_a_path(tmp_path):
    mixture, paths = _inputs(tmp_path, "/d/a")
    paths.write_text('web: "/d/a\\0b"\ncode: /d/code\n')
    refuses(["export", mixture, "--format", "hf", "--data-paths", paths],
            names=["'web'", "NUL", str(paths)], inputs=[mixture, paths])


def test_cli_deepspeed_export_is_safe_as_the_readme_uses_it(tmp_path):
    """`autoscale export ... --format megatron-deepspeed --out ds_data_args.sh`, then
    `source ds_data_args.sh; pretrain_gpt.py "${DATA_ARGS[@]}"` (a stand-in prints argv)."""
    marker = tmp_path / "PWNED"
    web_path = f"/d/my web/$(touch {marker})`touch {marker}`'\"*\nx"
    mixture, paths = _inputs(tmp_path, web_path)
    result = run_command(["export", mixture, "--format", "megatron-deepspeed", "--data-paths", paths,
                          "--out", tmp_path / "ds_data_args.sh"])
    assert result.returncode == 0, result.stderr
    (tmp_path / "pretrain_gpt.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    run = subprocess.run(["bash", "-c", 'source ds_data_args.sh && "$PY" pretrain_gpt.py "${DATA_ARGS[@]}"'],
                         cwd=tmp_path, env=dict(os.environ, PY=sys.executable),
                         capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == ["--data-path", "0.6", web_path, "0.4", "/d/code"]
    assert not marker.exists()


def test_cli_litgpt_still_works_with_a_deprecation_warning(tmp_path):
    mixture, paths = _inputs(tmp_path, "/d/web")
    result = run_command(["export", mixture, "--format", "litgpt", "--data-paths", paths])
    assert result.returncode == 0, result.stderr
    assert "deprecated" in result.stderr and "litdata" in result.stderr
    assert json.loads(result.stdout)["weights"] == [0.6, 0.4]
