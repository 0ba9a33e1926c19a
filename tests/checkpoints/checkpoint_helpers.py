"""Helpers of the checkpoint tests (a module of its own: tests/ has no packages)."""

import os
import shutil

import torch
import transformers

from optimum_qaic_moe.testing import write_shards

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

# (model_type, format, overrides): every on-disk layout the reader takes, at tiny size.
FORMATS = {
    "qwen3_moe-hub": ("qwen3_moe", "hub", {}),  # bf16, 4 shards, per-expert, 128 experts top-8, 1 KV head, dense layer
    "qwen3_moe-hub-tied": (
        "qwen3_moe",
        "hub",
        {"tie_word_embeddings": True, "num_experts": 16, "num_hidden_layers": 2},
    ),
    "qwen3_moe-bf16": ("qwen3_moe", "bf16", {}),
    "qwen3_moe-fused": ("qwen3_moe", "fused", {"rope_theta": 1e6}),  # transformers 5's fused save, 5.x config
    "qwen3_moe-fp32": ("qwen3_moe", "fp32", {}),
    "gpt_oss-hub": ("gpt_oss", "hub", {}),  # MXFP4 experts + bf16, 3 shards, the Hub's config.json
    "gpt_oss-bf16": ("gpt_oss", "bf16", {}),  # bf16 experts [E, H, 2I] / [E, I, H] with biases
    "gpt_oss-fp32": ("gpt_oss", "fp32", {}),
}


def assert_bitwise_equal(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    assert got.dtype == torch.float32, what
    assert tuple(got.shape) == tuple(want.shape), what
    want = want.to(torch.float32)  # bf16 -> float32 is exact
    assert torch.equal(got.contiguous().view(torch.int32), want.contiguous().view(torch.int32)), what


def load_tensors(model_dir: str) -> dict:
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    return {k: v for f in files for k, v in load_file(os.path.join(model_dir, f)).items()}


def edited_copy(src: str, dst: str, edit, num_shards: int = 4) -> str:
    """A copy of checkpoint ``src`` whose tensors went through ``edit(tensors)``, re-sharded with a fresh index."""
    shutil.copytree(src, dst)
    tensors = load_tensors(src)
    for f in os.listdir(dst):
        if "safetensors" in f:
            os.remove(os.path.join(dst, f))
    edit(tensors)
    write_shards(tensors, dst, num_shards)
    return dst
