"""Mixtral and Qwen2-MoE checkpoints in their Hub releases' format (``qaic-moe-tiny --format hub``: bf16 shards,
per-expert tensors, Mixtral's ``block_sparse_moe`` names, the releases' config.json fields): read as transformers
loads them on either line, and exported by the CLI with its verification passing (Mixtral)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from checkpoint_helpers import assert_bitwise_equal
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_qaic_moe.checkpoint import SafetensorsCheckpoint, meta_model, open_checkpoint
from optimum_qaic_moe.plugins import get_architectures
from optimum_qaic_moe.testing import write_checkpoint

ARCHS = ("mixtral", "qwen2_moe")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_config(model_dir):
    return read_json(os.path.join(model_dir, "config.json"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {arch: write_checkpoint(arch, str(root / arch), format="hub") for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_equals_what_transformers_loads(hub, arch):
    weights = open_checkpoint(hub[arch])
    want = AutoModelForCausalLM.from_pretrained(hub[arch], dtype=torch.float32).state_dict()
    assert sorted(weights.names()) == sorted(want)
    for name in weights.names():
        assert_bitwise_equal(weights.read(name), want[name], name)


def test_mixtral_hub_layout(hub):
    stored = SafetensorsCheckpoint(hub["mixtral"])
    assert stored.stored_dtype("model.layers.0.block_sparse_moe.experts.7.w1.weight") == "BF16"  # 8 experts
    assert "model.layers.0.block_sparse_moe.gate.weight" in stored.names()
    config = read_config(hub["mixtral"])
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["sliding_window"]) == (8, 2, None)
    assert config["rope_theta"] == 1e6 and "rope_parameters" not in config


def test_qwen2_moe_hub_declares_a_window_it_does_not_use(hub):
    """Qwen1.5-MoE's config.json carries sliding_window 32768 with use_sliding_window false: full attention."""
    config = read_config(hub["qwen2_moe"])
    assert (config["sliding_window"], config["use_sliding_window"], config["num_experts"]) == (32768, False, 60)
    model = meta_model(AutoConfig.from_pretrained(hub["qwen2_moe"]))
    assert get_architectures()["qwen2_moe"].cache_lengths(model, 64) == [64, 64]


@pytest.mark.slow  # one export
def test_mixtral_hub_checkpoint_exports_and_verifies(hub, tmp_path):
    """The user's path: optimum-cli on the Hub layout (bf16 block_sparse_moe experts into the installed line's
    model), the built-in verification against transformers passing."""
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    proc = subprocess.run(
        [
            cli,
            "export",
            "qaic",
            "--model",
            hub["mixtral"],
            "--prefill-seq-len",
            "8",
            "--ctx-len",
            "64",
            "--num-cores",
            "3",
            "--moe-prefill-packed-chunk-size",
            "5",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("[qaic] verify: prompt of")]) == 1
    assert read_json(tmp_path / "out" / "qaic_config.json")["model_type"] == "mixtral"
