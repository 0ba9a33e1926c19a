"""qaic-moe-tiny --format: the tiny checkpoints in the Hub's formats from the command line (real subprocesses)."""

import os
import subprocess
import sys

import pytest

from optimum_qaic_moe.checkpoint import SafetensorsCheckpoint

TINY = os.path.join(os.path.dirname(sys.executable), "qaic-moe-tiny")


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~15 s on 2 busy cores
def test_hub_format_from_the_command_line(tmp_path):
    out = tmp_path / "gpt-oss"
    proc = subprocess.run(
        [TINY, "gpt_oss", str(out), "--format", "hub"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote a tiny gpt_oss checkpoint (hub) to {out}"
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    assert SafetensorsCheckpoint(str(out)).stored_dtype("model.layers.0.mlp.experts.gate_up_proj") == "MXFP4"


def test_fused_format_of_gpt_oss_is_one_line_error(tmp_path):
    out = tmp_path / "gpt-oss"
    proc = subprocess.run(
        [TINY, "gpt_oss", str(out), "--format", "fused"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: --format fused is transformers 5's Qwen3-MoE layout: use it with qwen3_moe\n"
    assert not out.exists()
