"""The FLOP counter reports what the dispatch code really executes: rows fed to the expert MLP are counted by
wrapping the experts module of a real block."""

import pytest
import torch

from optimum_qaic_moe.architectures.qwen3_moe import Qwen3MoeArchitecture
from optimum_qaic_moe.moe.block import MoEDispatchConfig
from optimum_qaic_moe.moe.dispatch import executed_expert_flops, ideal_expert_flops
from optimum_qaic_moe.testing import tiny_model


class RowCounter(torch.nn.Module):
    def __init__(self, experts):
        super().__init__()
        self.experts, self.rows = experts, 0

    def forward(self, x, experts):
        self.rows += x.shape[0] * x.shape[1]  # [G, R, H]: G experts x R rows each
        return self.experts(x, experts)


@pytest.mark.parametrize("dispatch, cores, chunk, tokens", [
    ("blocked", 4, 5, 8), ("blocked", 1, 7, 5), ("blocked", 7, 3, 16), ("blocked", 6, 64, 9),
    ("loop", 4, 5, 8), ("gathered", 4, 5, 3),
])
def test_counter_matches_executed_rows(dispatch, cores, chunk, tokens):
    model = tiny_model("qwen3_moe")
    c = model.config
    block = Qwen3MoeArchitecture().moe_block(model.model.layers[0].mlp, c, MoEDispatchConfig(dispatch, cores, chunk))
    block.experts = RowCounter(block.experts)
    with torch.no_grad():
        block(torch.randn(1, tokens, c.hidden_size))
    per_row = 3 * c.hidden_size * c.moe_intermediate_size * 2
    assert block.experts.rows * per_row == executed_expert_flops(
        dispatch, tokens, c.num_experts_per_tok, c.hidden_size, c.moe_intermediate_size, c.num_experts, cores, chunk)


def test_ideal_and_ratios():
    # Qwen3-30B-A3B shapes at T=512, N=16, C=256: the static blocked graph does E/k = 16x the ideal work.
    ideal = ideal_expert_flops(512, 8, 2048, 768)
    assert ideal == 512 * 8 * 3 * 2048 * 768 * 2
    assert executed_expert_flops("blocked", 512, 8, 2048, 768, 128, 16, 256) == 16 * ideal
    assert executed_expert_flops("gathered", 512, 8, 2048, 768, 128) == ideal
    # 6 experts over 4 cores, 8 tokens in chunks of 5: slots of 4 and 2 experts, 2 chunks of 5 rows each.
    assert executed_expert_flops("blocked", 8, 2, 1, 1, 6, 4, 5) == (4 + 2) * 2 * 5 * 6
