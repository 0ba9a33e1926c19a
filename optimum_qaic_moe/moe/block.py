"""The MoE block that replaces a transformers MoE module: routing + expert MLP (+ optional shared experts) from the
architecture, dispatch from ``dispatch.py``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .dispatch import BlockedPlan, blocked_moe_forward, gathered_moe_forward, loop_moe_forward

logger = logging.getLogger(__name__)

DISPATCHES = ("blocked", "loop", "gathered")


@dataclass(frozen=True)
class MoEDispatchConfig:
    """``dispatch``: blocked (prefill), loop (prefill baseline) or gathered (decode)."""

    dispatch: str = "blocked"
    num_cores: int = 16
    chunk_size: int = 256

    def __post_init__(self):
        if self.dispatch not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {DISPATCHES}, got {self.dispatch!r}")
        if self.num_cores < 1 or self.chunk_size < 1:
            raise ValueError(f"num_cores and chunk_size must be >= 1, got {self.num_cores}, {self.chunk_size}")


class MoEBlock(nn.Module):
    """[B, S, H] -> [B, S, H].

    ``router``: module, x [T, H] -> (topk_idx [T, k] int64, topk_w [T, k]).
    ``experts``: module, (x [G, R, H], experts: slice | LongTensor[G]) -> [G, R, H]; holds the [E, ...] weights
    (views of the transformers parameters, not copies).
    ``shared``: optional module x [T, H] -> [T, H] that every token runs (Qwen2-MoE's shared expert), scaled by
    ``sigmoid(shared_gate(x))`` when a gate is given.
    """

    def __init__(self, router: nn.Module, experts: nn.Module, num_experts: int, config: MoEDispatchConfig,
                 shared: Optional[nn.Module] = None, shared_gate: Optional[nn.Module] = None):
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
        if cfg.dispatch == "blocked":
            self._describe_once(B * S)
            out = blocked_moe_forward(x, topk_idx, topk_w, self.experts, self.num_experts, cfg.num_cores,
                                      cfg.chunk_size)
        elif cfg.dispatch == "loop":
            out = loop_moe_forward(x, topk_idx, topk_w, self.experts, self.num_experts)
        else:
            out = gathered_moe_forward(x, topk_idx, topk_w, self.experts)
        if self.shared is not None:
            shared = self.shared(x)  # [T, H]
            out = out + (shared if self.shared_gate is None else torch.sigmoid(self.shared_gate(x)) * shared)
        return out.reshape(B, S, H)

    def _describe_once(self, num_tokens: int) -> None:
        plan = BlockedPlan.make(self.num_experts, self.config.num_cores, self.config.chunk_size, num_tokens)
        text = plan.describe()
        if text and text not in _DESCRIBED:
            _DESCRIBED.add(text)
            logger.warning("blocked MoE prefill: %s", text)


_DESCRIBED: set = set()  # one line per distinct split per process, not one per layer
