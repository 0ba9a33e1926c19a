"""GPT-OSS: attention sinks, alternating sliding-window / full layers (sliding layers keep a ring cache), YaRN
RoPE, a biased router with softmax over the top-k logits, and clamped GLU experts whose fused [E, H, 2I] weight
interleaves gate (even) and up (odd) columns; they are split once, as strided views, not per call.
"""

from __future__ import annotations

import torch
from torch import nn

from ..moe.block import MoEBlock, MoEDispatchConfig
from ..moe.experts import GatedExperts, Linear
from ..plugins import hookimpl
from ..tensors import local, transposed
from .base import Architecture

FP16_MIN = float(torch.finfo(torch.float16).min)


class TopKSoftmaxRouter(nn.Module):
    """top-k of the (biased) logits, then softmax over those k."""

    def __init__(self, logits: nn.Module, top_k: int):
        super().__init__()
        self.logits, self.top_k = logits, top_k

    def forward(self, x: torch.Tensor):
        top, topk_idx = torch.topk(self.logits(x), self.top_k, dim=-1)  # [T, k]
        return topk_idx, torch.softmax(top, dim=-1)


class ClampedGLU(nn.Module):
    """GPT-OSS's gate: (clamp(up) + 1) * gate * sigmoid(alpha * gate), gate clamped at +limit and, as on the card, at
    fp16's lowest value (an overflowed -inf gate would give -inf * 0 = NaN)."""

    def __init__(self, alpha: float, limit: float):
        super().__init__()
        self.alpha, self.limit = float(alpha), float(limit)

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate = gate.clamp(min=FP16_MIN, max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))


def _even(t):
    return t[..., ::2]


def _odd(t):
    return t[..., 1::2]


class GptOssArchitecture(Architecture):
    model_type = "gpt_oss"
    moe_returns_router_scores = True
    tiny_config = dict(  # a sliding window (8) shorter than any useful context: ring caches
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=6,
        num_experts_per_tok=2,
        sliding_window=8,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        initializer_range=0.1,
        rms_norm_eps=1e-5,
    )

    def moe_block(self, hf_mlp, config, dispatch: MoEDispatchConfig) -> MoEBlock | None:
        e = hf_mlp.experts
        experts = GatedExperts(
            local(e.gate_up_proj, _even),
            local(e.gate_up_proj, _odd),
            e.down_proj,
            ClampedGLU(e.alpha, e.limit),
            gate_bias=local(e.gate_up_proj_bias, _even),
            up_bias=local(e.gate_up_proj_bias, _odd),
            down_bias=e.down_proj_bias,
        )
        router = TopKSoftmaxRouter(
            Linear(transposed(hf_mlp.router.weight), hf_mlp.router.bias), config.num_experts_per_tok
        )
        return MoEBlock(router, experts, config.num_local_experts, dispatch)


@hookimpl
def register_architectures(register):
    register(GptOssArchitecture())
