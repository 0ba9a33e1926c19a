"""GPT-OSS on QAIC: attention with sinks, alternating sliding-window / full layers (sliding layers keep a ring
cache of window length), YaRN RoPE as transformers computes it, biased router with softmax over the top-k
logits, and the clamped GLU experts with gate/up interleaved in the fused [E, H, 2I] weight.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..exporters.config import QAICCausalLMExportConfig
from ..moe.block import MoEBlock, MoEDispatchConfig
from ..plugins import hookimpl
from .base import Architecture, kv_cache_attention


class GptOssRouter(nn.Module):
    def __init__(self, weight: nn.Parameter, bias: nn.Parameter, top_k: int):
        super().__init__()
        self.weight, self.bias = weight, bias  # [E, H], [E]
        self.top_k = top_k

    def forward(self, x: torch.Tensor):
        logits = F.linear(x, self.weight, self.bias)  # [T, E]
        top, topk_idx = torch.topk(logits, self.top_k, dim=-1)  # [T, k]
        return topk_idx, torch.softmax(top, dim=-1)


class GptOssExperts(nn.Module):
    def __init__(self, hf_experts: nn.Module):
        super().__init__()
        self.gate_up_proj = hf_experts.gate_up_proj  # [E, H, 2I], gate even columns, up odd
        self.gate_up_proj_bias = hf_experts.gate_up_proj_bias  # [E, 2I]
        self.down_proj = hf_experts.down_proj  # [E, I, H]
        self.down_proj_bias = hf_experts.down_proj_bias  # [E, H]
        self.alpha = float(hf_experts.alpha)
        self.limit = float(hf_experts.limit)

    def forward(self, x: torch.Tensor, experts: Union[slice, torch.Tensor]) -> torch.Tensor:
        gate_up = torch.matmul(x, self.gate_up_proj[experts]) + self.gate_up_proj_bias[experts].unsqueeze(1)
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]  # [G, R, I]
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        glu = gate * torch.sigmoid(gate * self.alpha)
        out = torch.matmul((up + 1) * glu, self.down_proj[experts])  # [G, R, H]
        return out + self.down_proj_bias[experts].unsqueeze(1)


class GptOssAttention(nn.Module):
    def __init__(self, hf_attention: nn.Module):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            hf_attention.q_proj, hf_attention.k_proj, hf_attention.v_proj, hf_attention.o_proj)
        self.sinks = hf_attention.sinks  # [Hq]
        self.head_dim = hf_attention.head_dim
        self.scaling = hf_attention.scaling
        self.sliding_window = hf_attention.sliding_window

    def forward(self, hidden, cos, sin, position_ids, past_k, past_v):
        from transformers.models.gpt_oss.modeling_gpt_oss import apply_rotary_pos_emb

        B, S, _ = hidden.shape
        shape = (B, S, -1, self.head_dim)
        q = self.q_proj(hidden).view(shape).transpose(1, 2)  # [B, Hq, S, D]
        k = self.k_proj(hidden).view(shape).transpose(1, 2)  # [B, Hkv, S, D]
        v = self.v_proj(hidden).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out, new_k, new_v = kv_cache_attention(q, k, v, past_k, past_v, position_ids, self.scaling,
                                               sliding_window=self.sliding_window, sinks=self.sinks)
        return self.o_proj(out), new_k, new_v


def _sliding_window(config, layer_idx: int) -> Optional[int]:
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer_idx] == "sliding_attention":
        return config.sliding_window
    return None


class GptOssArchitecture(Architecture):
    model_type = "gpt_oss"
    moe_returns_router_scores = True

    def attention(self, hf_attention, config, layer_idx):
        return GptOssAttention(hf_attention)

    def moe_block(self, hf_mlp, config, dispatch: MoEDispatchConfig) -> Optional[nn.Module]:
        router = GptOssRouter(hf_mlp.router.weight, hf_mlp.router.bias, config.num_experts_per_tok)
        return MoEBlock(router, GptOssExperts(hf_mlp.experts), config.num_local_experts, dispatch)

    def cache_length(self, config, layer_idx: int, ctx_len: int) -> int:
        window = _sliding_window(config, layer_idx)
        return ctx_len if window is None else min(window, ctx_len)


class GptOssExportConfig(QAICCausalLMExportConfig):
    pass


@hookimpl
def register_architectures(register):
    register(GptOssArchitecture())


@hookimpl
def register_export_configs(register):
    register("gpt_oss", GptOssExportConfig)
