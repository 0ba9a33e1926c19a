"""Qwen3-MoE on QAIC: q/k-normed GQA attention on the QAIC KV cache, softmax top-k router, SiLU-gated experts.

Handles both transformers layouts of the experts:
  * 4.57: ``experts`` is a list of MLPs with gate_proj/up_proj/down_proj Linear layers. They are stacked once
    into [E, 2I, H] / [E, H, I] and every Linear's weight becomes a view of the stack, so memory stays 1x.
  * 5.x: fused ``experts.gate_up_proj`` [E, 2I, H] and ``experts.down_proj`` [E, H, I], used as they are.
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


class Qwen3MoeRouter(nn.Module):
    def __init__(self, weight: nn.Parameter, top_k: int, norm_topk_prob: bool):
        super().__init__()
        self.weight = weight  # [E, H], the transformers parameter
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob

    def forward(self, x: torch.Tensor):
        logits = F.linear(x, self.weight)  # [T, E]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        topk_w, topk_idx = torch.topk(probs, self.top_k, dim=-1)  # [T, k]
        if self.norm_topk_prob:
            topk_w = topk_w / topk_w.sum(dim=-1, keepdim=True)
        return topk_idx, topk_w.to(x.dtype)


class Qwen3MoeExperts(nn.Module):
    def __init__(self, gate_up_proj: nn.Parameter, down_proj: nn.Parameter):
        super().__init__()
        self.gate_up_proj = gate_up_proj  # [E, 2I, H]: gate rows then up rows
        self.down_proj = down_proj  # [E, H, I]

    def forward(self, x: torch.Tensor, experts: Union[slice, torch.Tensor]) -> torch.Tensor:
        gate_up = torch.matmul(x, self.gate_up_proj[experts].transpose(1, 2))  # [G, R, 2I]
        gate, up = gate_up.chunk(2, dim=-1)
        return torch.matmul(F.silu(gate) * up, self.down_proj[experts].transpose(1, 2))  # [G, R, H]


def _fused_expert_weights(hf_moe: nn.Module):
    experts = hf_moe.experts
    if hasattr(experts, "gate_up_proj"):  # transformers 5.x
        return experts.gate_up_proj, experts.down_proj
    if getattr(hf_moe, "_qaic_stacked", None) is not None:
        return hf_moe._qaic_stacked
    # transformers 4.57: a list of MLPs. Stack once; point the Linear weights at views of the stack.
    with torch.no_grad():
        gate_up = nn.Parameter(torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in experts]),
                               requires_grad=False)
        down = nn.Parameter(torch.stack([e.down_proj.weight for e in experts]), requires_grad=False)
        inter = experts[0].gate_proj.weight.shape[0]
        for i, e in enumerate(experts):
            e.gate_proj.weight = nn.Parameter(gate_up[i, :inter], requires_grad=False)
            e.up_proj.weight = nn.Parameter(gate_up[i, inter:], requires_grad=False)
            e.down_proj.weight = nn.Parameter(down[i], requires_grad=False)
    object.__setattr__(hf_moe, "_qaic_stacked", (gate_up, down))  # not a submodule: no double registration
    return gate_up, down


class Qwen3MoeAttention(nn.Module):
    def __init__(self, hf_attention: nn.Module, config):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            hf_attention.q_proj, hf_attention.k_proj, hf_attention.v_proj, hf_attention.o_proj)
        self.q_norm, self.k_norm = hf_attention.q_norm, hf_attention.k_norm
        self.head_dim = hf_attention.head_dim
        self.scaling = hf_attention.scaling

    def forward(self, hidden, cos, sin, position_ids, past_k, past_v):
        from transformers.models.qwen3_moe.modeling_qwen3_moe import apply_rotary_pos_emb

        B, S, _ = hidden.shape
        shape = (B, S, -1, self.head_dim)
        q = self.q_norm(self.q_proj(hidden).view(shape)).transpose(1, 2)  # [B, Hq, S, D]
        k = self.k_norm(self.k_proj(hidden).view(shape)).transpose(1, 2)  # [B, Hkv, S, D]
        v = self.v_proj(hidden).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out, new_k, new_v = kv_cache_attention(q, k, v, past_k, past_v, position_ids, self.scaling)
        return self.o_proj(out), new_k, new_v


class Qwen3MoeArchitecture(Architecture):
    model_type = "qwen3_moe"

    def attention(self, hf_attention, config, layer_idx):
        return Qwen3MoeAttention(hf_attention, config)

    def moe_block(self, hf_mlp, config, dispatch: MoEDispatchConfig) -> Optional[nn.Module]:
        if not hasattr(hf_mlp, "gate"):  # a dense MLP layer (mlp_only_layers / decoder_sparse_step)
            return None
        router = Qwen3MoeRouter(hf_mlp.gate.weight, config.num_experts_per_tok, config.norm_topk_prob)
        return MoEBlock(router, Qwen3MoeExperts(*_fused_expert_weights(hf_mlp)), config.num_experts, dispatch)


class Qwen3MoeExportConfig(QAICCausalLMExportConfig):
    pass


@hookimpl
def register_architectures(register):
    register(Qwen3MoeArchitecture())


@hookimpl
def register_export_configs(register):
    register("qwen3_moe", Qwen3MoeExportConfig)
