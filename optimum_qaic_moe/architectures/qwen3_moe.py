"""Qwen3-MoE: q/k-normed GQA attention, softmax top-k router (optionally renormalized), SiLU-gated experts.

The experts come in two transformers layouts, both used without copying where the layout allows:
  * 5.x: fused ``experts.gate_up_proj`` [E, 2I, H] and ``experts.down_proj`` [E, H, I];
  * 4.57: a list of MLPs with gate_proj / up_proj / down_proj Linear layers (stacked once).
"""

from __future__ import annotations

import torch
from torch import nn

from ..moe.block import MoEBlock, MoEDispatchConfig
from ..plugins import hookimpl
from .base import Architecture, experts_from_fused, experts_from_modules, linear


class SoftmaxTopKRouter(nn.Module):
    """softmax over all experts, top-k, optionally renormalized over the k (Qwen3-MoE, Qwen2-MoE, Mixtral)."""

    def __init__(self, weight: nn.Module, top_k: int, normalize: bool):
        super().__init__()
        self.logits, self.top_k, self.normalize = weight, top_k, normalize

    def forward(self, x: torch.Tensor):
        probs = torch.softmax(self.logits(x), dim=-1, dtype=torch.float)  # [T, E]
        topk_w, topk_idx = torch.topk(probs, self.top_k, dim=-1)  # [T, k]
        if self.normalize:
            topk_w = topk_w / topk_w.sum(dim=-1, keepdim=True)
        return topk_idx, topk_w.to(x.dtype)


def gated_experts(hf_experts):
    """Either transformers layout of SiLU-gated experts with gate_proj / up_proj / down_proj."""
    if hasattr(hf_experts, "gate_up_proj"):
        return experts_from_fused(hf_experts.gate_up_proj, hf_experts.down_proj)
    return experts_from_modules(list(hf_experts), "gate_proj", "up_proj", "down_proj")


class Qwen3MoeArchitecture(Architecture):
    model_type = "qwen3_moe"
    tiny_config = dict(  # 6 experts: not a multiple of the usual test core counts
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=6,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.1,
        rms_norm_eps=1e-6,
    )

    def moe_block(self, hf_mlp, config, dispatch: MoEDispatchConfig) -> MoEBlock | None:
        if not hasattr(hf_mlp, "experts"):  # a dense MLP layer (mlp_only_layers / decoder_sparse_step)
            return None
        router = SoftmaxTopKRouter(linear(hf_mlp.gate), config.num_experts_per_tok, config.norm_topk_prob)
        return MoEBlock(router, gated_experts(hf_mlp.experts), config.num_experts, dispatch)


@hookimpl
def register_architectures(register):
    register(Qwen3MoeArchitecture())
