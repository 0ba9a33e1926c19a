"""MoE dispatch algorithms: pure tensor code, model-agnostic.

Notation: T tokens (batch x seq flattened), H hidden, E experts, k experts per token, N NSP cores,
C rows per packed chunk (blocked) or per tile (grouped), P = T*k routed (token, expert) pairs.

Every path takes the routing as ``topk_idx [T, k]`` (int64) and ``topk_w [T, k]`` and an ``expert_mlp``:

    expert_mlp(x: [G, R, H], experts: slice | LongTensor[G]) -> [G, R, H]

which runs the MLP of expert ``experts[g]`` on the rows ``x[g]``. A slice selects a contiguous range of
experts, so the weights it touches are views of the stored [E, ...] tensors, never copies.

All Python loops here unroll at export: the graph is static for one T.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ops import INT32_MAX, ctx_gather_3d, ctx_scatter_3d, ctx_scatter_3d_int

ExpertMLP = Callable[[torch.Tensor, slice | torch.Tensor], torch.Tensor]


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
    def make(cls, num_experts: int, num_cores: int, chunk_size: int, num_tokens: int) -> BlockedPlan:
        if num_cores < 1 or chunk_size < 1:
            raise ValueError(f"num_cores and chunk_size must be >= 1, got {num_cores} and {chunk_size}")
        return cls(num_experts, min(num_cores, num_experts), num_cores, min(chunk_size, num_tokens), num_tokens)

    @property
    def slots(self) -> list[slice]:
        """Expert range of each slot; the last may be shorter than num_cores."""
        n = self.num_cores
        return [slice(s, min(s + n, self.num_experts)) for s in range(0, self.num_experts, n)]

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_tokens / self.chunk_size)

    @property
    def executed_rows(self) -> int:
        """Expert-MLP rows the static graph computes (every chunk of every slot runs)."""
        return self.weight_loads * self.chunk_size

    @property
    def weight_loads(self) -> int:
        """Expert weight sets the graph reads: every chunk of a slot multiplies by its experts' weights again."""
        return self.num_experts * self.num_chunks

    def describe(self) -> str:
        parts = []
        if self.requested_cores > self.num_experts:
            parts.append(
                f"{self.requested_cores} cores for {self.num_experts} experts: "
                f"{self.requested_cores - self.num_experts} cores get no expert"
            )
        elif self.num_experts % self.num_cores:
            last = self.num_experts % self.num_cores
            parts.append(
                f"{self.num_experts} experts over {self.num_cores} cores: {len(self.slots)} slots, the "
                f"last holds {last} experts (cores {last}..{self.num_cores - 1} idle in it), no padding"
            )
        return "; ".join(parts)


def blocked_moe_forward(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    expert_mlp: ExpertMLP,
    num_experts: int,
    num_cores: int,
    chunk_size: int,
) -> torch.Tensor:
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
            rows = table[:, c * C : (c + 1) * C]  # [n, C]
            h = expert_mlp(ctx_gather_3d(xs, rows), experts)  # [n, C, H]
            h = h * ctx_gather_3d(ws, rows)  # [n, C, 1]
            part = ctx_scatter_3d(part, rows, ctx_gather_3d(part, rows) + h)  # empty rows are skipped
        acc = part if n == N else torch.cat([part, acc[n:]], dim=0)
    return acc.sum(0)  # [T, H]


@dataclass(frozen=True)
class GroupedPlan:
    """How the grouped prefill tiles the T*k routed (token, expert) pairs of T tokens in tiles of C rows.

    Expert e, routed to by c_e tokens, gets ceil(c_e / C) tiles, each holding rows of that expert only. A static
    graph needs a tile count that holds for every routing: since sum_e c_e = T*k and c_e <= T (top-k picks
    distinct experts), sum_e ceil(c_e / C) is at most

        M = min(T*k, floor((T*k + E*(C-1)) / C), E*ceil(T/C))

    (the first term because every tile holds at least one pair). The graph runs M tiles: M*C expert rows and M
    expert weight sets, whatever the routing.
    """

    num_experts: int
    top_k: int
    tile_rows: int  # effective C: min(C, T); a tile never holds more than T rows of one expert
    num_tokens: int

    @classmethod
    def make(cls, num_experts: int, top_k: int, tile_rows: int, num_tokens: int) -> GroupedPlan:
        if tile_rows < 1 or top_k < 1 or top_k > num_experts:
            raise ValueError(
                f"need tile_rows >= 1 and 1 <= top_k <= num_experts, got {tile_rows}, {top_k}, {num_experts}"
            )
        return cls(num_experts, top_k, min(tile_rows, num_tokens), num_tokens)

    @property
    def num_pairs(self) -> int:
        return self.num_tokens * self.top_k

    @property
    def num_tiles(self) -> int:
        """M, the static tile count (see the class docstring)."""
        P, E, C = self.num_pairs, self.num_experts, self.tile_rows
        return min(P, (P + E * (C - 1)) // C, E * math.ceil(self.num_tokens / C))

    @property
    def executed_rows(self) -> int:
        return self.num_tiles * self.tile_rows

    @property
    def weight_loads(self) -> int:
        return self.num_tiles

    def describe(self) -> str:
        ideal = self.num_pairs
        return (
            f"{self.num_tokens} tokens x top-{self.top_k} = {ideal} routed rows in {self.num_tiles} tiles of "
            f"{self.tile_rows}: {self.executed_rows} rows executed ({self.executed_rows / ideal:.2f}x the "
            f"ideal), {self.num_tiles} expert weight sets loaded"
        )


def grouped_layout(topk_idx: torch.Tensor, num_experts: int, plan: GroupedPlan):
    """Where each routed pair goes in the [M*C] tile rows, and which expert each of the M tiles runs.

    Pair p = t*k + j is (token t, its j-th expert). Pairs of one expert are ranked in token order (a cumsum, as
    the blocked path packs a slot) and fill that expert's tiles in order; experts' tiles follow each other in
    expert order. Returns ``pair_row [P]`` (distinct, all < M*C) and ``tile_expert [M]``; tiles past the last
    used one get expert E-1 and hold no pair.
    """
    E, C, M = num_experts, plan.tile_rows, plan.num_tiles
    device = topk_idx.device
    pair_expert = topk_idx.reshape(-1)  # [P]
    hit = (pair_expert.unsqueeze(1) == torch.arange(E, device=device)).to(torch.int32)  # [P, E]
    rank = ((torch.cumsum(hit, dim=0, dtype=torch.int32) - 1) * hit).sum(1)  # [P]: earlier pairs of its expert
    tiles = (hit.sum(0) + (C - 1)) // C  # [E]: ceil(c_e / C)
    tile_end = torch.cumsum(tiles, dim=0, dtype=torch.int32)  # [E]: one past expert e's last tile
    tile_start = tile_end - tiles  # [E]
    pair_row = (tile_start[pair_expert] + rank // C) * C + rank % C  # [P]
    tile_ids = torch.arange(M, device=device, dtype=torch.int32)
    tile_expert = (tile_end.unsqueeze(0) <= tile_ids.unsqueeze(1)).sum(1)  # [M]: experts whose tiles end before
    tile_expert = torch.clamp(tile_expert, max=E - 1).to(torch.int64)
    return pair_row, tile_expert


def grouped_moe_forward(
    x: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_w: torch.Tensor,
    expert_mlp: ExpertMLP,
    num_experts: int,
    tile_rows: int,
) -> torch.Tensor:
    """Grouped-tile MoE over x [T, H]; returns [T, H]. Executes M*C expert rows (``GroupedPlan``), not E*T.

    Rows are gathered into [M, C, H] tiles (empty rows read token 0 through the sentinel and are never read
    back), each tile's expert weights are gathered by its expert id, one batched MLP runs all tiles, and each
    token gathers its k result rows back and sums them with its routing weights: gathers only, no scatter-add.
    """
    T, H = x.shape
    k = topk_idx.shape[1]
    plan = GroupedPlan.make(num_experts, k, tile_rows, T)
    C, M, P = plan.tile_rows, plan.num_tiles, plan.num_pairs
    pair_row, tile_expert = grouped_layout(topk_idx, num_experts, plan)  # [P], [M]

    pair_token = (torch.arange(P, device=x.device) // k).to(torch.int32)  # [P]
    row_token = torch.full((1, M * C, 1), INT32_MAX, dtype=torch.int32, device=x.device)
    row_token = ctx_scatter_3d_int(row_token, pair_row.unsqueeze(0), pair_token.view(1, P, 1))  # [1, M*C, 1]
    rows = ctx_gather_3d(x.unsqueeze(0), row_token.view(1, M * C))  # [1, M*C, H]
    h = expert_mlp(rows.view(M, C, H), tile_expert)  # [M, C, H]
    back = ctx_gather_3d(h.reshape(1, M * C, H), pair_row.unsqueeze(0))  # [1, P, H]: each pair's own row
    return (back.view(T, k, H) * topk_w.unsqueeze(-1)).sum(1)


def loop_moe_forward(
    x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, expert_mlp: ExpertMLP, num_experts: int
) -> torch.Tensor:
    """Per-expert loop: every expert runs on every token, weighted by its (mostly zero) routing weight.

    The static-graph baseline the blocked path is measured against; E*T expert rows."""
    weights = dense_routing_weights(topk_idx, topk_w, num_experts)  # [T, E]
    out = torch.zeros_like(x)
    for e in range(num_experts):
        out = out + expert_mlp(x.unsqueeze(0), slice(e, e + 1))[0] * weights[:, e : e + 1]
    return out


def gathered_moe_forward(
    x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, expert_mlp: ExpertMLP
) -> torch.Tensor:
    """Decode path: each token multiplies only the weights of its k experts (gathered). T*k expert rows.

    The C=1 case of the grouped scheme (M = T*k tiles of one row), without the ranking: a tile per pair needs
    no sort."""
    T, H = x.shape
    k = topk_idx.shape[1]
    rows = x.unsqueeze(1).expand(T, k, H).reshape(T * k, 1, H)
    h = expert_mlp(rows, topk_idx.reshape(T * k))  # [T*k, 1, H]
    return (h.reshape(T, k, H) * topk_w.unsqueeze(-1)).sum(1)


# -- work accounting ------------------------------------------------------------------------------------------


def ideal_expert_flops(num_tokens: int, top_k: int, hidden: int, intermediate: int) -> int:
    """FLOPs of the selected experts only: T*k rows, 3 matmuls of H x I, 2 FLOPs per MAC."""
    return num_tokens * top_k * 3 * hidden * intermediate * 2


def expert_work(
    dispatch: str, num_tokens: int, top_k: int, num_experts: int, num_cores: int = 1, chunk_size: int = 256
):
    """(expert-MLP rows, expert weight sets loaded) that the static graph of ``dispatch`` executes per layer."""
    if dispatch == "blocked":
        blocked = BlockedPlan.make(num_experts, num_cores, chunk_size, num_tokens)
        return blocked.executed_rows, blocked.weight_loads
    if dispatch == "grouped":
        grouped = GroupedPlan.make(num_experts, top_k, chunk_size, num_tokens)
        return grouped.executed_rows, grouped.weight_loads
    if dispatch == "loop":
        return num_experts * num_tokens, num_experts
    if dispatch == "gathered":
        return num_tokens * top_k, num_tokens * top_k  # every row gathers its own expert's weights
    raise ValueError(f"unknown dispatch {dispatch!r}")


def executed_expert_flops(
    dispatch: str,
    num_tokens: int,
    top_k: int,
    hidden: int,
    intermediate: int,
    num_experts: int,
    num_cores: int = 1,
    chunk_size: int = 256,
) -> int:
    """Expert-MLP FLOPs the static graph of ``dispatch`` executes (blocked, grouped, loop or gathered)."""
    rows, _ = expert_work(dispatch, num_tokens, top_k, num_experts, num_cores, chunk_size)
    return rows * 3 * hidden * intermediate * 2
