"""MoE dispatch algorithms: pure tensor code, model-agnostic.

Notation: T tokens (batch x seq flattened), H hidden, E experts, k experts per token, N NSP cores,
C rows per packed chunk.

Every path takes the routing as ``topk_idx [T, k]`` (int64) and ``topk_w [T, k]`` and an ``expert_mlp``:

    expert_mlp(x: [G, R, H], experts: slice | LongTensor[G]) -> [G, R, H]

which runs the MLP of expert ``experts[g]`` on the rows ``x[g]``. A slice selects a contiguous range of
experts, so the weights it touches are views of the stored [E, ...] tensors, never copies.

All Python loops here unroll at export: the graph is static for one T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Union

import torch

from ..ops import INT32_MAX, ctx_gather_3d, ctx_scatter_3d, ctx_scatter_3d_int


ExpertMLP = Callable[[torch.Tensor, Union[slice, torch.Tensor]], torch.Tensor]


def dense_routing_weights(topk_idx: torch.Tensor, topk_w: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[T, k] routing -> [T, E] weights, zero where a token does not use an expert."""
    experts = torch.arange(num_experts, device=topk_idx.device)
    hit = topk_idx.unsqueeze(-1) == experts  # [T, k, E]
    return torch.where(hit, topk_w.unsqueeze(-1), torch.zeros((), dtype=topk_w.dtype)).sum(1)  # [T, E]


@dataclass(frozen=True)
class BlockedPlan:
    """How the blocked prefill splits E experts over N cores for T tokens in chunks of C rows.

    Experts are dealt to cores interleaved: core n owns experts n, n+N, n+2N, ... Slot l is the l-th expert of
    every core, i.e. experts l*N .. l*N + N-1. When N does not divide E the last slot holds fewer experts
    (only the first cores get one); nothing is padded or copied. When N > E only E cores have work.
    """

    num_experts: int
    num_cores: int  # cores that own at least one expert: min(N, E)
    requested_cores: int
    chunk_size: int  # effective C: min(C, T)
    num_tokens: int

    @classmethod
    def make(cls, num_experts: int, num_cores: int, chunk_size: int, num_tokens: int) -> "BlockedPlan":
        if num_cores < 1 or chunk_size < 1:
            raise ValueError(f"num_cores and chunk_size must be >= 1, got {num_cores} and {chunk_size}")
        return cls(num_experts, min(num_cores, num_experts), num_cores, min(chunk_size, num_tokens), num_tokens)

    @property
    def slots(self) -> List[slice]:
        """Expert range of each slot; the last may be shorter than num_cores."""
        n = self.num_cores
        return [slice(s, min(s + n, self.num_experts)) for s in range(0, self.num_experts, n)]

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_tokens / self.chunk_size)

    @property
    def executed_rows(self) -> int:
        """Expert-MLP rows the static graph computes (every chunk of every slot runs)."""
        return sum((s.stop - s.start) for s in self.slots) * self.num_chunks * self.chunk_size

    def describe(self) -> str:
        parts = []
        if self.requested_cores > self.num_experts:
            parts.append(f"{self.requested_cores} cores for {self.num_experts} experts: "
                         f"{self.requested_cores - self.num_experts} cores get no expert")
        elif self.num_experts % self.num_cores:
            last = self.num_experts % self.num_cores
            parts.append(f"{self.num_experts} experts over {self.num_cores} cores: {len(self.slots)} slots, the "
                         f"last holds {last} experts (cores {last}..{self.num_cores - 1} idle in it), no padding")
        return "; ".join(parts)


def blocked_moe_forward(x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, expert_mlp: ExpertMLP,
                        num_experts: int, num_cores: int, chunk_size: int) -> torch.Tensor:
    """Expert-blocked, NSP-parallel MoE over x [T, H]; returns [T, H]."""
    T, H = x.shape
    plan = BlockedPlan.make(num_experts, num_cores, chunk_size, T)
    N, C = plan.num_cores, plan.chunk_size
    t_pad = plan.num_chunks * C

    weights = dense_routing_weights(topk_idx, topk_w, num_experts)  # [T, E]
    routed = (topk_idx.unsqueeze(-1) == torch.arange(num_experts, device=x.device)).any(1)  # [T, E]
    token_ids = torch.arange(T, device=x.device).to(torch.int32)  # [T]
    sentinel = torch.full((), INT32_MAX, dtype=torch.int32)
    acc = torch.zeros(N, T, H, dtype=x.dtype, device=x.device)  # per-core accumulator

    for experts in plan.slots:
        n = experts.stop - experts.start  # cores busy in this slot
        mask = routed[:, experts].t()  # [n, T]
        packed_pos = torch.cumsum(mask.to(torch.int32), dim=1, dtype=torch.int32) - 1  # [n, T]
        packed_pos = torch.where(mask, packed_pos, sentinel)
        table = torch.full((n, t_pad, 1), INT32_MAX, dtype=torch.int32, device=x.device)
        table = ctx_scatter_3d_int(table, packed_pos, token_ids.expand(n, T).unsqueeze(-1))  # [n, t_pad, 1]
        table = table.squeeze(-1)  # packed row -> token, INT32_MAX where empty
        xs = x.unsqueeze(0).expand(n, T, H)
        ws = weights[:, experts].t().unsqueeze(-1)  # [n, T, 1]
        part = acc[:n]
        for c in range(plan.num_chunks):
            rows = table[:, c * C:(c + 1) * C]  # [n, C]
            h = expert_mlp(ctx_gather_3d(xs, rows), experts)  # [n, C, H]
            h = h * ctx_gather_3d(ws, rows)  # [n, C, 1]
            part = ctx_scatter_3d(part, rows, ctx_gather_3d(part, rows) + h)  # empty rows are skipped
        acc = part if n == N else torch.cat([part, acc[n:]], dim=0)
    return acc.sum(0)  # [T, H]


def loop_moe_forward(x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, expert_mlp: ExpertMLP,
                     num_experts: int) -> torch.Tensor:
    """Per-expert loop: every expert runs on every token, weighted by its (mostly zero) routing weight.

    The static-graph baseline the blocked path is measured against; E*T expert rows."""
    weights = dense_routing_weights(topk_idx, topk_w, num_experts)  # [T, E]
    out = torch.zeros_like(x)
    for e in range(num_experts):
        out = out + expert_mlp(x.unsqueeze(0), slice(e, e + 1))[0] * weights[:, e:e + 1]
    return out


def gathered_moe_forward(x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
                         expert_mlp: ExpertMLP) -> torch.Tensor:
    """Decode path: each token multiplies only the weights of its k experts (gathered). T*k expert rows."""
    T, H = x.shape
    k = topk_idx.shape[1]
    rows = x.unsqueeze(1).expand(T, k, H).reshape(T * k, 1, H)
    h = expert_mlp(rows, topk_idx.reshape(T * k))  # [T*k, 1, H]
    return (h.reshape(T, k, H) * topk_w.unsqueeze(-1)).sum(1)


# -- work accounting ------------------------------------------------------------------------------------------

def ideal_expert_flops(num_tokens: int, top_k: int, hidden: int, intermediate: int) -> int:
    """FLOPs of the selected experts only: T*k rows, 3 matmuls of H x I, 2 FLOPs per MAC."""
    return num_tokens * top_k * 3 * hidden * intermediate * 2


def executed_expert_flops(dispatch: str, num_tokens: int, top_k: int, hidden: int, intermediate: int,
                          num_experts: int, num_cores: int = 1, chunk_size: int = 256) -> int:
    """Expert-MLP FLOPs the static graph of ``dispatch`` executes (``blocked``, ``loop`` or ``gathered``)."""
    per_row = 3 * hidden * intermediate * 2
    if dispatch == "blocked":
        rows = BlockedPlan.make(num_experts, num_cores, chunk_size, num_tokens).executed_rows
    elif dispatch == "loop":
        rows = num_experts * num_tokens
    elif dispatch == "gathered":
        rows = num_tokens * top_k
    else:
        raise ValueError(f"unknown dispatch {dispatch!r}")
    return rows * per_row
