"""The examples run as a user runs them (a fresh process, a tiny checkpoint written on the fly)."""

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


@pytest.mark.slow
@pytest.mark.parametrize("script, expected_lines", [("qwen3_moe_generate.py", 1), ("gpt_oss_generate.py", 2)])
def test_example_generates_text(tmp_path, script, expected_lines):
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script)], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == expected_lines
    assert all(len(line.split()) > 5 for line in lines)  # prompt plus generated words
