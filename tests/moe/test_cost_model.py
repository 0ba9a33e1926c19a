"""`--moe-prefill-packed-chunk-size auto`: what the cost model picks for the real model shapes, against the
targets of the grouped dispatch (paper figures: no device here)."""

import pytest

from optimum_qaic_moe.moe.cost import DEVICES, choose_chunk_size, predict
from optimum_qaic_moe.moe.dispatch import expert_work

MODELS = {  # E experts, k per token
    "Qwen3-30B-A3B": (128, 8),
    "Qwen3-235B-A22B": (128, 8),
    "gpt-oss-20b": (32, 4),
    "gpt-oss-120b": (128, 4),
}
N = 16


def blocked_default_loads(T, k, E):
    return expert_work("blocked", T, k, E, N, 256)[1]


@pytest.mark.parametrize("device", sorted(DEVICES))
@pytest.mark.parametrize("T", [512, 2048])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_auto_keeps_both_targets_for_long_prefills(model, T, device):
    """At most 2x the ideal expert FLOPs, no more weight loads than blocked at C=256, and the fastest such C."""
    E, k = MODELS[model]
    dev = DEVICES[device]
    chosen = choose_chunk_size("grouped", T, k, E, N, dev)
    rows, loads = expert_work("grouped", T, k, E, N, chosen)
    assert rows <= 2 * T * k and loads <= blocked_default_loads(T, k, E)
    best = predict("grouped", T, k, E, N, chosen, device=dev).seconds
    for C in range(1, T + 1):
        r, n = expert_work("grouped", T, k, E, N, C)
        if r <= 2 * T * k and n <= blocked_default_loads(T, k, E):
            assert predict("grouped", T, k, E, N, C, device=dev).seconds >= best


@pytest.mark.parametrize("model", sorted(MODELS))
def test_short_prefill_lets_the_cost_model_choose(model):
    """T=128: one blocked chunk loads each expert once, and no tile size reaches both bounds (a tile shorter than
    T gives M > E, since C <= T*k - E here; C = T runs E/k x the FLOPs): auto takes the fastest by the model."""
    E, k = MODELS[model]
    T = 128
    for C in range(1, T + 1):
        rows, loads = expert_work("grouped", T, k, E, N, C)
        assert rows > 2 * T * k or loads > blocked_default_loads(T, k, E)
    chosen = choose_chunk_size("grouped", T, k, E, N)
    times = {C: predict("grouped", T, k, E, N, C).seconds for C in range(1, T + 1)}
    assert times[chosen] == min(times.values())


@pytest.mark.parametrize("T, k, E, cores", [(128, 8, 128, 16), (512, 4, 32, 16), (2048, 8, 128, 4), (16, 2, 6, 3)])
def test_auto_for_blocked_is_one_chunk(T, k, E, cores):
    """Blocked executes E*T rows whatever the chunk; every extra chunk reloads every expert."""
    assert choose_chunk_size("blocked", T, k, E, cores) == T


def test_prediction_arithmetic_qwen3_30b():
    """The README's worked example: T=512, tiles of 32, AI 100 Pro, 16 cores, fp16 weights."""
    W = 3 * 2048 * 768  # weight elements of one expert
    p = predict("grouped", 512, 8, 128, 16, 32, W)
    assert (p.rows, p.loads) == (8064, 252)
    assert p.compute_s == pytest.approx(8064 * 2 * W / 125e12)
    assert p.dram_s == pytest.approx(252 * W * 2 / 137e9)
    assert round(p.seconds * 1e3, 2) == 17.97
