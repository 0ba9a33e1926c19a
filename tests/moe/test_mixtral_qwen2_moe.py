"""Mixtral and Qwen2-MoE beyond the registry-driven tests and their config variants (test_model_variants.py): which
layers keep ring caches, the shared expert, every kind of layer through the CLI.

What differs between the transformers lines (CI runs both): Mixtral's MoE is ``block_sparse_moe`` with w1/w3/w2
expert MLPs on 4.57 and a fused ``mlp`` on 5.x; Qwen2-MoE's attention keeps no ``scaling`` on 4.57, and its sliding
window covers every layer there (eager and SDPA) but only the layers ``layer_types`` names on 5.x."""

import onnx
import pytest
import torch
import transformers
from conftest import optimum_cli
from test_model_variants import ARCHS

from optimum_qaic_moe.moe.block import MoEBlock, MoEDispatchConfig
from optimum_qaic_moe.testing import tiny_model, write_tiny_checkpoint

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
QWEN2_SLIDING = {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2}


@pytest.mark.parametrize(
    "arch, overrides, lengths",
    [
        ("mixtral", {}, [32, 32]),
        ("mixtral", {"sliding_window": 3}, [3, 3]),
        ("qwen2_moe", {}, [32, 32]),
        ("qwen2_moe", {"sliding_window": 32768, "use_sliding_window": False}, [32, 32]),  # Qwen1.5-MoE's config.json
        ("qwen2_moe", QWEN2_SLIDING, [3, 32] if TRANSFORMERS_5 else [3, 3]),
    ],
    ids=lambda v: str(v),
)
def test_cache_lengths_follow_the_installed_transformers(arch, overrides, lengths):
    """Which layers keep a ring cache (of the window's length) is what transformers windows on this line."""
    assert ARCHS[arch].cache_lengths(tiny_model(arch, **overrides), 32) == lengths


def test_qwen2_moe_block_carries_the_shared_expert_and_its_gate():
    model = tiny_model("qwen2_moe", mlp_only_layers=[1])
    arch = ARCHS["qwen2_moe"]
    moe, dense = (arch.mlp(arch.mlp_of(layer), model.config, MoEDispatchConfig()) for layer in model.model.layers)
    assert isinstance(moe, MoEBlock) and moe.shared is not None and moe.shared_gate.weight_t.shape == (32, 1)
    assert not isinstance(dense, MoEBlock)
    hf = arch.mlp_of(model.model.layers[0])
    x = torch.randn(1, 7, 32)
    with torch.no_grad():
        ref = hf(x)
        ref = ref[0] if isinstance(ref, tuple) else ref
        shared = torch.sigmoid(hf.shared_expert_gate(x)) * hf.shared_expert(x)
        assert (ref - shared).abs().max() > 1e-2  # the routed experts contribute ...
        assert (moe(x) - ref).abs().max() <= 1e-5 * ref.abs().max()  # ... and so does the gated shared expert


@pytest.mark.slow  # one export
def test_every_kind_of_layer_exports_through_the_cli(tmp_path):
    """Qwen2-MoE with dense and MoE layers, sliding and full attention: one ONNX function per kind of layer, and
    the CLI's built-in verification against transformers passes."""
    overrides = dict(QWEN2_SLIDING, num_hidden_layers=3, max_window_layers=3, mlp_only_layers=[1])
    model_dir = write_tiny_checkpoint("qwen2_moe", str(tmp_path / "model"), **overrides)
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        model_dir,
        "--prefill-seq-len",
        8,
        "--ctx-len",
        32,
        "--num-cores",
        4,
        "--prefill-only",
        tmp_path / "out",
        check=True,
    )
    assert "[qaic] verify: prompt of" in proc.stderr
    hf = tiny_model("qwen2_moe", **overrides)
    kinds = {ARCHS["qwen2_moe"].layer_kind(hf, i) for i in range(3)}
    assert kinds == ({"moe_sliding", "dense"} if TRANSFORMERS_5 else {"moe_sliding", "dense_sliding"})
    graph = onnx.load(str(tmp_path / "out" / "prefill.onnx"), load_external_data=False)
    assert len([f for f in graph.functions if f.domain == "optimum_qaic_moe.layers"]) == len(kinds)
