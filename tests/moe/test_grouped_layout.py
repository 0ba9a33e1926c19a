"""The grouped prefill's tiling, checked in eager mode: every routed (token, expert) pair gets a row of its own, in
a tile that runs its expert, within the static tile count M, and each token reads back exactly the rows it was
scattered to. Under every routing of small problems (so including every routing that fills M exactly), under
the worst routing (every token picks the same k experts) and a bound-filling routing at larger sizes."""

import itertools

import pytest
import torch

from optimum_qaic_moe.architectures.qwen3_moe import Qwen3MoeArchitecture
from optimum_qaic_moe.moe.block import MoEDispatchConfig
from optimum_qaic_moe.moe.dispatch import GroupedPlan, grouped_layout, grouped_moe_forward
from optimum_qaic_moe.testing import tiny_model


def tiles_needed(topk_idx, num_experts, tile_rows):
    counts = torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # [E]
    return int(((counts + tile_rows - 1) // tile_rows).sum())


def check_layout(topk_idx, num_experts, chunk):
    """Asserts the layout invariants; returns the tiles this routing fills."""
    T, k = topk_idx.shape
    plan = GroupedPlan.make(num_experts, k, chunk, T)
    C, M = plan.tile_rows, plan.num_tiles
    pair_row, tile_expert = grouped_layout(topk_idx, num_experts, plan)  # [T*k], [M]
    rows = pair_row.tolist()
    assert len(set(rows)) == T * k, "two pairs share a row"
    assert 0 <= min(rows) and max(rows) < M * C, "a pair fell outside the M static tiles"
    assert torch.equal(tile_expert[pair_row // C], topk_idx.reshape(-1)), "a pair's tile runs another expert"
    used = tiles_needed(topk_idx, num_experts, C)
    assert used <= M
    return used


def labelled_forward(topk_idx, num_experts, chunk):
    """grouped_moe_forward with values that say where every row came from, compared exactly: token t carries t,
    expert e adds 1000*(e+1), the j-th pair of a token weighs 2**j. A row read back from another token, another
    expert or another pair of the same token changes the sum."""
    T, k = topk_idx.shape
    x = torch.arange(T, dtype=torch.float64).unsqueeze(1)  # [T, 1]
    weights = (2.0 ** torch.arange(k, dtype=torch.float64)).expand(T, k)  # [T, k]

    def labelled_mlp(rows, experts):  # [G, R, 1], LongTensor[G]
        return rows + 1000.0 * (experts.to(rows.dtype) + 1).view(-1, 1, 1)

    out = grouped_moe_forward(x, topk_idx, weights, labelled_mlp, num_experts, chunk)  # [T, 1]
    expected = (weights * (x + 1000.0 * (topk_idx.to(x.dtype) + 1))).sum(1, keepdim=True)
    assert torch.equal(out, expected)


def routing_with_counts(counts, num_tokens, top_k):
    """A routing in which expert e is picked by counts[e] tokens (each token picks top_k distinct experts):
    every token takes the experts with the most picks left."""
    left = list(counts)
    assert sum(left) == num_tokens * top_k and max(left) <= num_tokens
    rows = []
    for _ in range(num_tokens):
        picked = sorted(range(len(left)), key=lambda e: (-left[e], e))[:top_k]
        for e in picked:
            left[e] -= 1
        rows.append(sorted(picked))
    assert min(left) == 0
    return torch.tensor(rows)


@pytest.mark.parametrize("num_experts, top_k, num_tokens", [(4, 2, 3), (3, 1, 4), (5, 2, 2), (3, 2, 4), (4, 3, 3)])
def test_every_routing_of_small_problems(num_experts, top_k, num_tokens):
    """All routings, every tile size up to T+1: the invariants hold and some routing fills the bound M exactly."""
    choices = list(itertools.combinations(range(num_experts), top_k))
    for chunk in range(1, num_tokens + 2):
        M = GroupedPlan.make(num_experts, top_k, chunk, num_tokens).num_tiles
        filled = set()
        for routing in itertools.product(choices, repeat=num_tokens):
            topk_idx = torch.tensor(routing)
            filled.add(check_layout(topk_idx, num_experts, chunk))
            labelled_forward(topk_idx, num_experts, chunk)
        assert max(filled) == M, (chunk, M, filled)


@pytest.mark.parametrize("experts", [range(8), range(120, 128), range(3, 128, 16)])
@pytest.mark.parametrize("chunk", [1, 16, 32, 33, 256, 512])
def test_worst_routing_at_qwen3_30b_sizes(experts, chunk):
    """E=128, k=8, T=512 (Qwen3-30B-A3B routing at a 512-token prefill), every token on the same 8 experts."""
    topk_idx = torch.tensor(list(experts)).expand(512, 8)
    check_layout(topk_idx, 128, chunk)
    labelled_forward(topk_idx, 128, chunk)


def test_random_routings_at_qwen3_30b_sizes():
    torch.manual_seed(0)
    for chunk in (1, 7, 32, 100, 512):
        topk_idx = torch.rand(512, 128).topk(8, dim=1).indices  # [T, k], distinct experts per token
        check_layout(topk_idx, 128, chunk)
        labelled_forward(topk_idx, 128, chunk)


def bound_filling_routing():
    """E=16, k=4, T=40, C=8: M = min(160, floor((160 + 16*7)/8), 16*5) = 34; counts 17, 17 and fourteen 9s need
    3 + 3 + 14*2 = 34 tiles."""
    topk_idx = routing_with_counts([17, 17] + [9] * 14, 40, 4)
    assert tiles_needed(topk_idx, 16, 8) == GroupedPlan.make(16, 4, 8, 40).num_tiles == 34
    return topk_idx


def test_bound_filling_routing():
    topk_idx = bound_filling_routing()
    check_layout(topk_idx, 16, 8)
    labelled_forward(topk_idx, 16, 8)


def transformers_experts(hf_moe, x, topk_idx, topk_w):
    """The transformers experts of a Qwen3-MoE block under a given routing: 5.x takes the routing as arguments;
    4.57 holds a list of MLPs, run here pair by pair."""
    experts = hf_moe.experts
    if hasattr(experts, "gate_up_proj"):
        return experts(x, topk_idx, topk_w)
    out = torch.zeros_like(x)
    for t, j in itertools.product(range(x.shape[0]), range(topk_idx.shape[1])):
        out[t] += topk_w[t, j] * experts[int(topk_idx[t, j])](x[t : t + 1])[0]
    return out


@pytest.mark.parametrize("routing", ["worst", "fills M"])
@pytest.mark.parametrize("chunk", [3, 8, 40])
def test_real_experts_under_forced_routings_match_transformers(routing, chunk):
    """The rewritten Qwen3-MoE experts (16 experts, top-4) under a forced routing equal transformers' own experts
    under the same routing at fp32 round-off."""
    model = tiny_model("qwen3_moe", num_experts=16, num_experts_per_tok=4)
    hf_moe = model.model.layers[0].mlp
    block = Qwen3MoeArchitecture().moe_block(hf_moe, model.config, MoEDispatchConfig("grouped"))
    topk_idx = torch.tensor([[1, 5, 6, 15]]).expand(40, 4) if routing == "worst" else bound_filling_routing()
    torch.manual_seed(0)
    x = torch.randn(40, model.config.hidden_size)
    w = torch.rand(40, 4)
    with torch.no_grad():
        out = grouped_moe_forward(x, topk_idx, w, block.experts, 16, chunk)
        ref = transformers_experts(hf_moe, x, topk_idx, w)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-5
