"""What every architecture shares: the QAIC KV-cache attention, the decoder layer, the causal-LM graph module, and
``Architecture``, the one per-model extension point.

The QAIC graph contract: inputs ``input_ids [B, S]``, ``position_ids [B, S]`` (padding = -1) and one
``past_key.i`` / ``past_value.i`` per layer; outputs ``logits [B, 1, V]`` at each row's last valid position and
the updated caches (``*_RetainedState``).

A layer's cache holds L slots. Full-attention layers have L = ctx_len and slot s holds position s. A sliding
window layer whose window W is shorter than the context has L = min(W, ctx_len) slots and is a ring: slot s holds
the latest position p with p % L == s. One formula covers both, so a prefill chunk reads the cache as it was
before the chunk (CtxGather), attends over [cache slots, chunk tokens], then writes the chunk (CtxScatter at
position % L; in a ring only the last L tokens of a chunk are written, so no slot is written twice).

Device faithfulness (the card runs these graphs in fp16): every float constant is within the fp16 range (the
mask floor is fp16's lowest finite value, not float32's, which fp16 turns into -inf and a fully masked row into
NaN); cache slots that hold no position and padded chunk rows are zeroed before they reach a matmul, so garbage or
NaN there cannot reach a valid row; RoPE angles come from cos/sin tables gathered by position (positions above 2048
are not exact fp16 numbers); RMSNorm is the compiler's CustomRMSNorm kernel.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..moe.block import MoEBlock, MoEDispatchConfig
from ..moe.experts import GatedExperts, GatedMLP, Linear, silu_gate
from ..ops import INT32_MAX, ctx_gather, ctx_scatter, rms_norm
from ..tensors import local, stacked, transposed
from .export_config import QAICCausalLMExportConfig

_NO_POS = torch.iinfo(torch.int64).max
MASKED = float(torch.finfo(torch.float16).min)  # -65504: the lowest score fp16 can hold


# -- building blocks -------------------------------------------------------------------------------------------


def linear(hf_linear: nn.Module) -> Linear:
    """A transformers Linear (or any module with ``weight`` [out, in] and maybe ``bias``) as ``x @ W.T``, W.T a
    view of its weight."""
    return Linear(transposed(cast(torch.Tensor, hf_linear.weight)), getattr(hf_linear, "bias", None))


def submodules(hf_module: nn.Module, *names: str) -> list[nn.Module]:
    """``hf_module.<name>`` for each name: the caller knows they are modules (torch types any module attribute as
    ``Tensor | Module``)."""
    return [cast(nn.Module, getattr(hf_module, name)) for name in names]


class RMSNorm(nn.Module):
    """transformers' RMSNorm as the compiler's CustomRMSNorm node (weight is the transformers parameter)."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight, self.eps = weight, float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class RotaryTables(nn.Module):
    """cos/sin of every position, ``[P, D/2]``, computed once by the transformers rotary module (YaRN and
    attention scaling included) and gathered by position in the graph."""

    def __init__(self, hf_rotary: nn.Module, config, positions: int, head_dim: int):
        super().__init__()
        rotary = type(hf_rotary)(config=config)  # on the CPU: the model's own may sit on the meta device
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(positions)[None])
        half = head_dim // 2
        self.cos = nn.Parameter(cos[0, :, :half].contiguous(), requires_grad=False)  # [P, D/2]
        self.sin = nn.Parameter(sin[0, :, :half].contiguous(), requires_grad=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = position_ids.clamp(min=0)  # padding (-1) reads position 0; those rows are masked anyway
        return F.embedding(pos, self.cos), F.embedding(pos, self.sin)  # [B, S, D/2], a Gather each


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, D] rotated by the half-dim tables [B, S, D/2]; the same float ops as transformers'
    rotate_half form (x1*c - x2*s, x2*c + x1*s)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def kv_cache_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    position_ids: torch.Tensor,
    scaling: float,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, Hq, S, D], k/v [B, Hkv, S, D], past [B, Hkv, L, D] -> out [B, S, Hq*D], new past k, v."""
    B, Hq, S, D = q.shape
    L = past_k.shape[2]
    valid = position_ids >= 0  # [B, S]
    start = torch.where(valid, position_ids, _NO_POS).min(1, keepdim=True).values  # [B, 1]
    start = torch.where(start == _NO_POS, 0, start)
    last = torch.where(valid, position_ids, -1).max(1, keepdim=True).values  # [B, 1]

    slots = torch.arange(L, device=q.device)  # [L]
    L_t = torch.full((), L, dtype=torch.int64, device=q.device)  # a tensor: L is a symbolic dim in the graph
    slot_pos = start - 1 - torch.remainder(start - 1 - slots, L_t)  # [B, L] position held by each slot
    slot_valid = slot_pos >= 0
    read = torch.where(slot_valid, slots, INT32_MAX)
    slot_keep = slot_valid[:, None, :, None]  # empty slots may hold anything on the card: zero them
    cached_k = torch.where(slot_keep, ctx_gather(past_k, read), 0.0)  # [B, Hkv, L, D]
    cached_v = torch.where(slot_keep, ctx_gather(past_v, read), 0.0)
    row_keep = valid[:, None, :, None]  # padded rows of the chunk: zero too
    k, v = torch.where(row_keep, k, 0.0), torch.where(row_keep, v, 0.0)

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
    scores = torch.where(visible.unsqueeze(1), scores, MASKED)  # padded query rows: uniform, finite
    if sinks is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        logits = torch.cat([scores, sinks.reshape(1, Hq, 1, 1).expand(B, Hq, S, 1)], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        probs = torch.softmax(logits, dim=-1)[..., :-1]
    out = torch.matmul(probs, values).transpose(1, 2).reshape(B, S, Hq * D)

    keep = valid & (position_ids > last - L)  # in a ring, only the last L tokens of the chunk survive
    write = torch.where(keep, torch.remainder(position_ids, L_t), INT32_MAX)
    return out, ctx_scatter(past_k, write, k), ctx_scatter(past_v, write, v)


class Attention(nn.Module):
    """GQA attention on the QAIC KV cache. Optional per-head q/k RMSNorm (Qwen3), attention sinks (GPT-OSS) and a
    sliding window."""

    def __init__(
        self,
        q: Linear,
        k: Linear,
        v: Linear,
        o: Linear,
        head_dim: int,
        scaling: float,
        q_norm: RMSNorm | None = None,
        k_norm: RMSNorm | None = None,
        sinks: torch.Tensor | None = None,
        sliding_window: int | None = None,
    ):
        super().__init__()
        self.q, self.k, self.v, self.o = q, k, v, o
        self.q_norm, self.k_norm, self.sinks = q_norm, k_norm, sinks
        self.head_dim, self.scaling, self.sliding_window = head_dim, float(scaling), sliding_window

    def forward(self, hidden, cos, sin, position_ids, past_k, past_v):
        B, S, _ = hidden.shape
        shape = (B, S, -1, self.head_dim)
        q, k, v = self.q(hidden).view(shape), self.k(hidden).view(shape), self.v(hidden).view(shape)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, S, D]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out, new_k, new_v = kv_cache_attention(
            q, k, v, past_k, past_v, position_ids, self.scaling, self.sliding_window, self.sinks
        )
        return self.o(out), new_k, new_v


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: ``(hidden, cos, sin, position_ids, past_k, past_v) -> (hidden, new_k, new_v)``.
    The export emits it as one ONNX function per kind of layer, called once per layer."""

    def __init__(self, input_norm: nn.Module, attention: Attention, post_norm: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_norm, self.attention, self.post_norm, self.mlp = input_norm, attention, post_norm, mlp

    def forward(self, hidden, cos, sin, position_ids, past_k, past_v):
        h, new_k, new_v = self.attention(self.input_norm(hidden), cos, sin, position_ids, past_k, past_v)
        hidden = hidden + h
        hidden = hidden + self.mlp(self.post_norm(hidden))
        return hidden, new_k, new_v


class CausalLMGraph(nn.Module):
    """The module the QAIC graphs are traced from: the graph contract above, over ``DecoderLayer``s."""

    def __init__(
        self,
        embed: torch.Tensor,
        rope: RotaryTables,
        layers: list[nn.Module],  # DecoderLayers, or the export's stand-ins for them
        norm: nn.Module,
        lm_head: Linear,
        layer_kinds: list[str],
    ):
        super().__init__()
        self.embed, self.rope, self.layers, self.norm, self.lm_head = embed, rope, nn.ModuleList(layers), norm, lm_head
        self.layer_kinds = layer_kinds  # layers of one kind share one ONNX function

    def with_layers(self, layers: list[nn.Module]) -> CausalLMGraph:
        """The same graph over other layer modules (the export traces layers separately)."""
        return CausalLMGraph(self.embed, self.rope, layers, self.norm, self.lm_head, self.layer_kinds).eval()

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, past_key_values: list[torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        """past_key_values: [past_key.0, past_value.0, past_key.1, ...]. Returns (logits, *retained_state)."""
        hidden = F.embedding(input_ids, self.embed)  # [B, S, H]
        cos, sin = self.rope(position_ids)
        retained = []
        for i, layer in enumerate(self.layers):
            hidden, new_k, new_v = layer(
                hidden, cos, sin, position_ids, past_key_values[2 * i], past_key_values[2 * i + 1]
            )
            retained += [new_k, new_v]
        last = position_ids.argmax(dim=1, keepdim=True)  # [B, 1] last valid position
        hidden = hidden.gather(1, last.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [B, 1, H]
        return (self.lm_head(self.norm(hidden)), *retained)  # logits [B, 1, V]


# -- the extension point ---------------------------------------------------------------------------------------


class Architecture:
    """One model family: how its transformers modules become the QAIC graph modules.

    A new architecture sets ``model_type`` and implements ``moe_block`` (router + experts). Everything else has a
    default that fits transformers' Llama-style layout; override the accessors where a model names its parts
    differently (e.g. Mixtral's MoE is ``block_sparse_moe`` on transformers 4.x)."""

    model_type: str = ""
    export_config_class = QAICCausalLMExportConfig
    # Config kwargs of a tiny random model (tests, examples, `qaic-moe-tiny`): small enough to export in seconds,
    # shaped so the interesting cases happen (experts not a multiple of the usual core counts, ...).
    tiny_config: dict = {}

    @property
    def moe_returns_router_scores(self) -> bool:
        """transformers' decoder layer unpacks (hidden, router_scores) from the MoE module (GPT-OSS does). A
        property, so an architecture may decide it by the transformers version (Mixtral), or set a class
        attribute."""
        return False

    # accessors: where the parts of a transformers model are
    def decoder_layers(self, hf_model) -> list[nn.Module]:
        return list(hf_model.model.layers)

    def embed_tokens(self, hf_model) -> nn.Module:
        return hf_model.model.embed_tokens

    def final_norm(self, hf_model) -> nn.Module:
        return hf_model.model.norm

    def lm_head(self, hf_model) -> nn.Module:
        return hf_model.lm_head

    def rotary_embedding(self, hf_model) -> nn.Module:
        return hf_model.model.rotary_emb

    def attention_of(self, hf_layer) -> nn.Module:
        return hf_layer.self_attn

    def mlp_of(self, hf_layer) -> nn.Module:
        return hf_layer.mlp

    def input_norm_of(self, hf_layer) -> nn.Module:
        return hf_layer.input_layernorm

    def post_attention_norm_of(self, hf_layer) -> nn.Module:
        return hf_layer.post_attention_layernorm

    # building blocks
    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def norm(self, hf_norm: nn.Module) -> RMSNorm:
        eps = getattr(hf_norm, "variance_epsilon", None)
        return RMSNorm(cast(torch.Tensor, hf_norm.weight), getattr(hf_norm, "eps", 1e-6) if eps is None else eps)

    def sliding_window(self, hf_attention: nn.Module, config, layer_idx: int) -> int | None:
        return getattr(hf_attention, "sliding_window", None)

    def attention(self, hf_attention: nn.Module, config, layer_idx: int) -> Attention:
        q_norm, k_norm = getattr(hf_attention, "q_norm", None), getattr(hf_attention, "k_norm", None)
        scaling = getattr(hf_attention, "scaling", self.head_dim(config) ** -0.5)  # 4.57's Qwen2-MoE keeps none
        q, k, v, o = submodules(hf_attention, "q_proj", "k_proj", "v_proj", "o_proj")
        return Attention(
            linear(q),
            linear(k),
            linear(v),
            linear(o),
            self.head_dim(config),
            scaling,
            q_norm=None if q_norm is None else self.norm(q_norm),
            k_norm=None if k_norm is None else self.norm(k_norm),
            sinks=getattr(hf_attention, "sinks", None),
            sliding_window=self.sliding_window(hf_attention, config, layer_idx),
        )

    def moe_block(self, hf_mlp: nn.Module, config, dispatch: MoEDispatchConfig) -> MoEBlock | None:
        """The QAIC replacement of a layer's MLP, or None when that MLP is dense."""
        raise NotImplementedError

    def dense_mlp(self, hf_mlp: nn.Module, config) -> GatedMLP:
        gate, up, down = submodules(hf_mlp, "gate_proj", "up_proj", "down_proj")
        return GatedMLP(linear(gate), linear(up), linear(down), silu_gate)

    def mlp(self, hf_mlp: nn.Module, config, dispatch: MoEDispatchConfig) -> nn.Module:
        block = self.moe_block(hf_mlp, config, dispatch)
        return self.dense_mlp(hf_mlp, config) if block is None else block

    def decoder_layer(self, hf_layer: nn.Module, config, layer_idx: int, dispatch: MoEDispatchConfig):
        return DecoderLayer(
            self.norm(self.input_norm_of(hf_layer)),
            self.attention(self.attention_of(hf_layer), config, layer_idx),
            self.norm(self.post_attention_norm_of(hf_layer)),
            self.mlp(self.mlp_of(hf_layer), config, dispatch),
        )

    # the cache
    def layer_window(self, hf_model, layer_idx: int) -> int | None:
        """Layer layer_idx's sliding window (its cache is a ring of that many slots), or None."""
        layer = self.decoder_layers(hf_model)[layer_idx]
        return self.sliding_window(self.attention_of(layer), hf_model.config, layer_idx)

    def cache_length(self, hf_model, layer_idx: int, ctx_len: int) -> int:
        window = self.layer_window(hf_model, layer_idx)
        return ctx_len if window is None else min(window, ctx_len)

    def cache_lengths(self, hf_model, ctx_len: int) -> list[int]:
        return [self.cache_length(hf_model, i, ctx_len) for i in range(len(self.decoder_layers(hf_model)))]

    def cache_shapes(self, config, batch_size: int, length: int) -> tuple[tuple, tuple]:
        """(key, value) cache shapes of one layer."""
        shape = (batch_size, config.num_key_value_heads, length, self.head_dim(config))
        return shape, shape

    def layer_kind(self, hf_model, layer_idx: int) -> str:
        """Layers of one kind are traced once and share one ONNX function."""
        layer = self.decoder_layers(hf_model)[layer_idx]
        window = self.sliding_window(self.attention_of(layer), hf_model.config, layer_idx)
        moe = self.moe_block(self.mlp_of(layer), hf_model.config, MoEDispatchConfig()) is not None
        return ("moe" if moe else "dense") + ("_sliding" if window is not None else "")

    # the whole model
    def graph_module(self, hf_model, dispatch: MoEDispatchConfig, positions: int) -> CausalLMGraph:
        """The traced module, built from a transformers model (real or on the meta device) without copying."""
        config = hf_model.config
        hf_layers = self.decoder_layers(hf_model)
        layers = [self.decoder_layer(layer, config, i, dispatch) for i, layer in enumerate(hf_layers)]
        rope = RotaryTables(self.rotary_embedding(hf_model), config, positions, self.head_dim(config))
        graph = CausalLMGraph(
            cast(torch.Tensor, self.embed_tokens(hf_model).weight),
            rope,
            layers,
            self.norm(self.final_norm(hf_model)),
            linear(self.lm_head(hf_model)),
            [self.layer_kind(hf_model, i) for i in range(len(layers))],
        )
        return graph.eval()

    def rewrite_moe(self, hf_model, dispatch: MoEDispatchConfig):
        """Replace the MoE blocks of a loaded transformers model in place (for eager use; export does not need
        it)."""
        for layer in self.decoder_layers(hf_model):
            block = self.moe_block(self.mlp_of(layer), hf_model.config, dispatch)
            if block is not None:
                self.set_mlp(layer, _TransformersMoEInterface(block, self.moe_returns_router_scores))
        return hf_model

    def set_mlp(self, hf_layer, module: nn.Module) -> None:
        hf_layer.mlp = module

    def export_config(self, config, task: str = "text-generation-with-past"):
        return self.export_config_class(config, task=task, architecture=self)


class _TransformersMoEInterface(nn.Module):
    """An MoEBlock where a transformers decoder layer expects its MoE module (some also expect router scores)."""

    def __init__(self, block: MoEBlock, with_router_scores: bool):
        super().__init__()
        self.block, self.with_router_scores = block, with_router_scores

    def forward(self, hidden_states):
        out = self.block(hidden_states)
        return (out, None) if self.with_router_scores else out


# -- expert weight helpers shared by the architectures ---------------------------------------------------------


def experts_from_fused(gate_up: torch.Tensor, down: torch.Tensor, activation=silu_gate) -> GatedExperts:
    """transformers 5.x layout: gate_up [E, 2I, H] (gate rows, then up rows), down [E, H, I]."""
    inter = gate_up.shape[1] // 2
    return GatedExperts(
        local(gate_up, lambda t: t[:, :inter].transpose(1, 2)),
        local(gate_up, lambda t: t[:, inter:].transpose(1, 2)),
        local(down, lambda t: t.transpose(1, 2)),
        activation,
    )


def experts_from_modules(experts: list[nn.Module], gate: str, up: str, down: str, activation=silu_gate) -> GatedExperts:
    """transformers 4.x layout: one MLP module per expert with Linear layers named gate/up/down."""

    def weights(name):
        return [getattr(e, name).weight for e in experts]

    return GatedExperts(
        stacked(weights(gate), torch.t), stacked(weights(up), torch.t), stacked(weights(down), torch.t), activation
    )
