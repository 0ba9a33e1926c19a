"""The work counters report what the dispatch code really executes: rows fed to the expert MLP and expert weight
sets it multiplies by are counted by wrapping the experts module of a real block, and read off the exported
prefill and decode graphs (MatMul shapes from ONNX shape inference)."""

import os

import pytest
import torch
from conftest import optimum_cli

from optimum_qaic_moe.architectures.qwen3_moe import Qwen3MoeArchitecture
from optimum_qaic_moe.moe.block import MoEDispatchConfig
from optimum_qaic_moe.moe.dispatch import GroupedPlan, executed_expert_flops, expert_work, ideal_expert_flops
from optimum_qaic_moe.moe.graph_work import graph_expert_work
from optimum_qaic_moe.testing import tiny_config, tiny_model


class WorkCounter(torch.nn.Module):
    def __init__(self, experts):
        super().__init__()
        self.experts, self.rows, self.loads = experts, 0, 0

    def forward(self, x, experts):
        self.rows += x.shape[0] * x.shape[1]  # [G, R, H]: G experts x R rows each
        self.loads += x.shape[0]  # one weight set per expert of the batch
        return self.experts(x, experts)


@pytest.mark.parametrize(
    "dispatch, cores, chunk, tokens",
    [
        ("blocked", 4, 5, 8),
        ("blocked", 1, 7, 5),
        ("blocked", 7, 3, 16),
        ("blocked", 6, 64, 9),
        ("grouped", 4, 1, 8),
        ("grouped", 4, 3, 8),
        ("grouped", 1, 5, 16),
        ("grouped", 4, 64, 9),
        ("loop", 4, 5, 8),
        ("gathered", 4, 5, 3),
    ],
)
def test_counter_matches_executed_rows_and_loads(dispatch, cores, chunk, tokens):
    model = tiny_model("qwen3_moe")
    c = model.config
    block = Qwen3MoeArchitecture().moe_block(model.model.layers[0].mlp, c, MoEDispatchConfig(dispatch, cores, chunk))
    block.experts = WorkCounter(block.experts)
    with torch.no_grad():
        block(torch.randn(1, tokens, c.hidden_size))
    assert (block.experts.rows, block.experts.loads) == expert_work(
        dispatch, tokens, c.num_experts_per_tok, c.num_experts, cores, chunk
    )
    per_row = 3 * c.hidden_size * c.moe_intermediate_size * 2
    assert block.experts.rows * per_row == executed_expert_flops(
        dispatch, tokens, c.num_experts_per_tok, c.hidden_size, c.moe_intermediate_size, c.num_experts, cores, chunk
    )


@pytest.mark.parametrize(
    "name, E, k, T, C, tiles, ratio",
    [
        # The arithmetic of the issue: tiles (= weight loads) and executed / ideal rows.
        ("Qwen3-30B-A3B", 128, 8, 512, 32, 252, 1.97),
        ("Qwen3-30B-A3B", 128, 8, 512, 16, 376, 1.47),
        ("gpt-oss-20b", 32, 4, 512, 64, 63, 1.97),
        ("gpt-oss-120b", 128, 4, 512, 16, 248, 1.94),
    ],
)
def test_grouped_tile_counts_for_real_shapes(name, E, k, T, C, tiles, ratio):
    plan = GroupedPlan.make(E, k, C, T)
    assert plan.num_tiles == tiles
    assert round(plan.executed_rows / (T * k), 2) == ratio


@pytest.mark.slow
def test_counter_matches_the_exported_graphs(tmp_path, tiny_dirs, exports):
    """Expert MatMul FLOPs and weight elements of the CLI-exported graphs (2 layers) equal the counters:
    blocked (the shared export: 4 cores, chunk 5, prefill 8), grouped (tiles of 3), loop, and gathered (decode)."""
    c = tiny_config("qwen3_moe")
    E, k, layers = c.num_experts, c.num_experts_per_tok, c.num_hidden_layers
    per_expert = 3 * c.hidden_size * c.moe_intermediate_size
    graphs = {
        ("blocked", 4, 5, 8): os.path.join(exports["qwen3_moe"][0], "prefill.onnx"),
        ("gathered", 4, 1, 1): os.path.join(exports["qwen3_moe"][0], "decode.onnx"),
    }
    for dispatch, chunk in (("grouped", 3), ("loop", 5)):
        out = tmp_path / dispatch
        optimum_cli(
            "export",
            "qaic",
            "--model",
            tiny_dirs["qwen3_moe"],
            "--prefill-seq-len",
            8,
            "--ctx-len",
            32,
            "--num-cores",
            4,
            "--moe-prefill-dispatch",
            dispatch,
            "--moe-prefill-packed-chunk-size",
            chunk,
            "--prefill-only",
            "--no-verify",
            "--compile",
            "never",
            out,
            check=True,
        )
        graphs[(dispatch, 4, chunk, 8)] = str(out / "prefill.onnx")
    for (dispatch, cores, chunk, tokens), path in graphs.items():
        rows, loads = expert_work(dispatch, tokens, k, E, cores, chunk)
        work = graph_expert_work(path)
        assert work.flops == layers * rows * per_expert * 2, dispatch
        assert work.weight_elements == layers * loads * per_expert, dispatch


def test_ideal_and_ratios():
    # Qwen3-30B-A3B shapes at T=512, N=16, C=256: the static blocked graph does E/k = 16x the ideal work.
    ideal = ideal_expert_flops(512, 8, 2048, 768)
    assert ideal == 512 * 8 * 3 * 2048 * 768 * 2
    assert executed_expert_flops("blocked", 512, 8, 2048, 768, 128, 16, 256) == 16 * ideal
    assert executed_expert_flops("gathered", 512, 8, 2048, 768, 128) == ideal
    # 6 experts over 4 cores, 8 tokens in chunks of 5: slots of 4 and 2 experts, 2 chunks of 5 rows each.
    assert executed_expert_flops("blocked", 8, 2, 1, 1, 6, 4, 5) == (4 + 2) * 2 * 5 * 6
