"""The MoE block that replaces a transformers MoE module: routing + expert MLP (+ optional shared experts) from the
architecture, dispatch from ``dispatch.py``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .cost import FP16_BYTES, choose_chunk_size
from .dispatch import (
    BlockedPlan,
    GroupedPlan,
    blocked_moe_forward,
    gathered_moe_forward,
    grouped_moe_forward,
    loop_moe_forward,
)

logger = logging.getLogger(__name__)

ALGORITHMS = ("blocked", "grouped", "loop", "gathered")


@dataclass(frozen=True)
class MoEDispatchConfig:
    """``algorithm``: blocked (prefill), grouped (prefill, fewer FLOPs), loop (prefill baseline) or gathered
    (decode). ``chunk_size``: rows per packed chunk (blocked) or per tile (grouped), or ``"auto"`` to let the
    cost model (``cost.choose_chunk_size``) pick it for the model's routing and the prefill length, with expert
    weights of ``weight_bytes`` bytes per element on the device (fp16 unless compiled with -mxfp6-matmul)."""

    algorithm: str = "blocked"
    num_cores: int = 16
    chunk_size: int | str = 256
    weight_bytes: float = FP16_BYTES

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        auto = self.chunk_size == "auto"
        if self.num_cores < 1 or not (auto or (isinstance(self.chunk_size, int) and self.chunk_size >= 1)):
            raise ValueError(
                f"num_cores must be >= 1 and chunk_size >= 1 or 'auto', got {self.num_cores}, {self.chunk_size!r}"
            )

    def resolve_chunk_size(self, num_tokens: int, top_k: int, num_experts: int) -> int:
        if isinstance(self.chunk_size, int):  # else "auto" (__post_init__)
            return self.chunk_size
        return choose_chunk_size(
            self.algorithm, num_tokens, top_k, num_experts, self.num_cores, bytes_per_weight=self.weight_bytes
        )


class MoEBlock(nn.Module):
    """[B, S, H] -> [B, S, H].

    ``router``: module, x [T, H] -> (topk_idx [T, k] int64, topk_w [T, k]).
    ``experts``: module, (x [G, R, H], experts: slice | LongTensor[G]) -> [G, R, H]; holds the [E, ...] weights
    (views of the transformers parameters, not copies).
    ``shared``: optional module x [T, H] -> [T, H] that every token runs (Qwen2-MoE's shared expert), scaled by
    ``sigmoid(shared_gate(x))`` when a gate is given.
    """

    def __init__(
        self,
        router: nn.Module,
        experts: nn.Module,
        num_experts: int,
        config: MoEDispatchConfig,
        shared: nn.Module | None = None,
        shared_gate: nn.Module | None = None,
    ):
        super().__init__()
        self.router = router
        self.experts = experts
        self.num_experts = num_experts
        self.config = config
        self.shared, self.shared_gate = shared, shared_gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        B, S, H = hidden_states.shape
        x = hidden_states.reshape(B * S, H)
        topk_idx, topk_w = self.router(x)
        cfg = self.config
        if cfg.algorithm in ("blocked", "grouped"):
            chunk = cfg.resolve_chunk_size(B * S, topk_idx.shape[1], self.num_experts)
        if cfg.algorithm == "blocked":
            self._describe_once(BlockedPlan.make(self.num_experts, cfg.num_cores, chunk, B * S), chunk)
            out = blocked_moe_forward(x, topk_idx, topk_w, self.experts, self.num_experts, cfg.num_cores, chunk)
        elif cfg.algorithm == "grouped":
            self._describe_once(GroupedPlan.make(self.num_experts, topk_idx.shape[1], chunk, B * S), chunk)
            out = grouped_moe_forward(x, topk_idx, topk_w, self.experts, self.num_experts, chunk)
        elif cfg.algorithm == "loop":
            out = loop_moe_forward(x, topk_idx, topk_w, self.experts, self.num_experts)
        else:
            out = gathered_moe_forward(x, topk_idx, topk_w, self.experts)
        if self.shared is not None:
            shared = self.shared(x)  # [T, H]
            out = out + (shared if self.shared_gate is None else torch.sigmoid(self.shared_gate(x)) * shared)
        return out.reshape(B, S, H)

    def _describe_once(self, plan, chunk: int) -> None:
        text = plan.describe()
        if self.config.chunk_size == "auto":
            text = "; ".join(filter(None, [f"chunk size auto = {chunk} (cost model)", text]))
        if text and text not in _DESCRIBED:
            _DESCRIBED.add(text)
            logger.warning("%s MoE prefill: %s", self.config.algorithm, text)


_DESCRIBED: set = set()  # one line per distinct split per process, not one per layer
