"""What every architecture plugin shares: the QAIC KV-cache attention core and the causal-LM skeleton.

The QAIC graph contract (DESIGN.md section 4): inputs ``input_ids [B, S]``, ``position_ids [B, S]`` (padding
= -1) and one ``past_key.i`` / ``past_value.i`` [B, Hkv, L, D] per layer; outputs ``logits [B, 1, V]`` at the
last valid position and the updated caches (``*_RetainedState``).

A layer's cache holds L slots. Full-attention layers have L = ctx_len and slot s holds position s. A sliding
window layer whose window W is shorter than the context has L = W and is a ring: slot s holds the latest
position p with p % W == s. One formula covers both, so a prefill chunk reads the cache as it was before the
chunk (CtxGather, invalid slots masked), attends over [cache slots, chunk tokens], then writes the chunk
(CtxScatter at position % L; in a ring only the last L tokens of a chunk are written, so no slot is written
twice).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from ..moe.block import MoEDispatchConfig
from ..ops import INT32_MAX, ctx_gather, ctx_scatter

_NO_POS = torch.iinfo(torch.int64).max


class Architecture:
    """One model family. Subclasses set ``model_type`` and implement the three builders."""

    model_type: str = ""
    # transformers' decoder layer unpacks (hidden, router_scores) from the MoE module (GPT-OSS does).
    moe_returns_router_scores: bool = False

    def attention(self, hf_attention: nn.Module, config, layer_idx: int) -> nn.Module:
        """A module ``(hidden, cos, sin, position_ids, past_k, past_v) -> (out, new_k, new_v)``."""
        raise NotImplementedError

    def moe_block(self, hf_mlp: nn.Module, config, dispatch: MoEDispatchConfig) -> Optional[nn.Module]:
        """The QAIC replacement of a layer's MLP, or None when the layer's MLP is dense (kept as is)."""
        raise NotImplementedError

    def cache_length(self, config, layer_idx: int, ctx_len: int) -> int:
        return ctx_len

    def cache_lengths(self, config, ctx_len: int) -> List[int]:
        return [self.cache_length(config, i, ctx_len) for i in range(config.num_hidden_layers)]

    def rewrite_moe(self, hf_model: nn.Module, dispatch: MoEDispatchConfig) -> nn.Module:
        """Replace the MoE blocks of a loaded transformers model in place (its other modules untouched)."""
        for layer in hf_model.model.layers:
            block = self.moe_block(layer.mlp, hf_model.config, dispatch)
            if block is not None:
                layer.mlp = _WithRouterScores(block) if self.moe_returns_router_scores else block
        return hf_model

    def qaic_model(self, hf_model: nn.Module, dispatch: MoEDispatchConfig, ctx_len: int) -> "QAICCausalLM":
        return QAICCausalLM(hf_model, self, dispatch, ctx_len)


class _WithRouterScores(nn.Module):
    """Returns (out, None) where transformers' decoder layer expects the MoE module's router scores too."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, hidden_states):
        return self.block(hidden_states), None


def kv_cache_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_k: torch.Tensor,
                       past_v: torch.Tensor, position_ids: torch.Tensor, scaling: float,
                       sliding_window: Optional[int] = None, sinks: Optional[torch.Tensor] = None,
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, Hq, S, D], k/v [B, Hkv, S, D], past [B, Hkv, L, D] -> out [B, S, Hq*D], new past k, v."""
    B, Hq, S, D = q.shape
    L = past_k.shape[2]
    valid = position_ids >= 0  # [B, S]
    start = torch.where(valid, position_ids, _NO_POS).min(1, keepdim=True).values  # [B, 1]
    start = torch.where(start == _NO_POS, 0, start)
    last = torch.where(valid, position_ids, -1).max(1, keepdim=True).values  # [B, 1]

    slots = torch.arange(L, device=q.device)  # [L]
    slot_pos = start - 1 - torch.remainder(start - 1 - slots, L)  # [B, L] position held by each slot
    slot_valid = slot_pos >= 0
    read = torch.where(slot_valid, slots, INT32_MAX)
    cached_k, cached_v = ctx_gather(past_k, read), ctx_gather(past_v, read)  # [B, Hkv, L, D]

    keys = torch.cat([cached_k, k], dim=2)  # [B, Hkv, L+S, D]
    values = torch.cat([cached_v, v], dim=2)
    key_pos = torch.cat([slot_pos, position_ids], dim=1)  # [B, L+S]
    key_valid = torch.cat([slot_valid, valid], dim=1)
    q_pos = position_ids.unsqueeze(-1)  # [B, S, 1]
    visible = key_valid.unsqueeze(1) & (key_pos.unsqueeze(1) <= q_pos)  # [B, S, L+S]
    if sliding_window is not None:
        visible = visible & (key_pos.unsqueeze(1) > q_pos - sliding_window)

    groups = Hq // keys.shape[1]
    keys = keys.repeat_interleave(groups, dim=1)  # [B, Hq, L+S, D]
    values = values.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, keys.transpose(2, 3)) * scaling  # [B, Hq, S, L+S]
    # A finite floor, not -inf: padded query rows see no key and must not turn into NaN.
    scores = torch.where(visible.unsqueeze(1), scores, torch.finfo(scores.dtype).min)
    if sinks is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        logits = torch.cat([scores, sinks.reshape(1, Hq, 1, 1).expand(B, Hq, S, 1)], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        probs = torch.softmax(logits, dim=-1)[..., :-1]
    out = torch.matmul(probs, values).transpose(1, 2).reshape(B, S, Hq * D)

    keep = valid & (position_ids > last - L)  # in a ring, only the last L tokens of the chunk survive
    write = torch.where(keep, torch.remainder(position_ids, L), INT32_MAX)
    return out, ctx_scatter(past_k, write, k), ctx_scatter(past_v, write, v)


class QAICCausalLM(nn.Module):
    """A transformers causal LM rewritten to the QAIC graph contract. Reuses the loaded weights."""

    def __init__(self, hf_model: nn.Module, arch: Architecture, dispatch: MoEDispatchConfig, ctx_len: int):
        super().__init__()
        config = hf_model.config
        base = hf_model.model
        self.config = config
        self.embed_tokens = base.embed_tokens
        self.rotary_emb = base.rotary_emb
        self.norm = base.norm
        self.lm_head = hf_model.lm_head
        self.input_norms = nn.ModuleList([layer.input_layernorm for layer in base.layers])
        self.post_norms = nn.ModuleList([layer.post_attention_layernorm for layer in base.layers])
        self.attentions = nn.ModuleList(
            [arch.attention(layer.self_attn, config, i) for i, layer in enumerate(base.layers)])
        mlps = []
        for layer in base.layers:
            block = arch.moe_block(layer.mlp, config, dispatch)
            mlps.append(layer.mlp if block is None else block)
        self.mlps = nn.ModuleList(mlps)
        self.cache_lengths = arch.cache_lengths(config, ctx_len)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: List[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """past_key_values: [past_key.0, past_value.0, past_key.1, ...]. Returns (logits, *retained_state)."""
        hidden = self.embed_tokens(input_ids)  # [B, S, H]
        cos, sin = self.rotary_emb(hidden, position_ids.clamp(min=0))
        retained = []
        for i, attention in enumerate(self.attentions):
            residual = hidden
            h, new_k, new_v = attention(self.input_norms[i](hidden), cos, sin, position_ids,
                                        past_key_values[2 * i], past_key_values[2 * i + 1])
            hidden = residual + h
            h = self.mlps[i](self.post_norms[i](hidden))
            if isinstance(h, tuple):  # transformers MoE modules also return router scores
                h = h[0]
            hidden = hidden + h
            retained += [new_k, new_v]
        last = position_ids.argmax(dim=1)  # [B] last valid position
        hidden = hidden[torch.arange(hidden.shape[0]), last].unsqueeze(1)  # [B, 1, H]
        logits = self.lm_head(self.norm(hidden))  # [B, 1, V]
        return (logits, *retained)
