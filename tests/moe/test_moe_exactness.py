"""The rewritten MoE block equals the transformers MoE module itself, at fp32 round-off, in eager and exported
(onnxruntime) form, over core counts that do and do not divide the expert count, chunk (blocked) and tile
(grouped) sizes that do and do not divide the token count, and both transformers layouts (CI runs 4.57 and
5.x)."""

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import torch

from optimum_qaic_moe.exporters.onnx_export import export_onnx
from optimum_qaic_moe.moe.block import MoEDispatchConfig
from optimum_qaic_moe.plugins import get_architectures
from optimum_qaic_moe.testing import tiny_configs, tiny_model

E = 6  # experts in the tiny models
ARCHS = {t: a for t, a in get_architectures().items() if t in tiny_configs()}
CORES = [1, 2, 3, 4, E, E + 1]
SEQ_LENS = [1, 5, 64]
BATCHES = [1, 2]
TOL = 1e-5


def chunk_sizes(T):
    return sorted({1, 7, T, 2 * T})


@pytest.fixture(scope="module", params=sorted(ARCHS))
def block(request):
    arch = ARCHS[request.param]
    model = tiny_model(request.param)
    return arch, model, arch.mlp_of(arch.decoder_layers(model)[0])


def reference(hf_block, x):
    with torch.no_grad():
        out = hf_block(x)
    return out[0] if isinstance(out, tuple) else out


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.slow
def test_blocked_grid_eager(block):
    arch, model, hf = block
    torch.manual_seed(0)
    worst = 0.0
    for B, S in itertools.product(BATCHES, SEQ_LENS):
        x = torch.randn(B, S, model.config.hidden_size)
        ref = reference(hf, x)
        for N in CORES:
            for C in chunk_sizes(B * S):
                with torch.no_grad():
                    out = arch.moe_block(hf, model.config, MoEDispatchConfig("blocked", N, C))(x)
                err = rel_err(out, ref)
                assert err <= TOL, (B, S, N, C, err)
                worst = max(worst, err)
    print(f"worst relative error {worst:.2e}")


def test_grouped_grid_eager(block):
    """Tile sizes 1, 7, T, 2T and auto (the cost model's pick depends on the core count, so auto runs over all)."""
    arch, model, hf = block
    torch.manual_seed(4)
    for B, S in itertools.product(BATCHES, SEQ_LENS):
        x = torch.randn(B, S, model.config.hidden_size)
        ref = reference(hf, x)
        configs = [(4, C) for C in chunk_sizes(B * S)] + [(N, "auto") for N in CORES]
        for N, C in configs:
            with torch.no_grad():
                out = arch.moe_block(hf, model.config, MoEDispatchConfig("grouped", N, C))(x)
            assert rel_err(out, ref) <= TOL, (B, S, N, C)


@pytest.mark.parametrize("dispatch", ["loop", "gathered"])
def test_loop_and_gathered_eager(block, dispatch):
    arch, model, hf = block
    torch.manual_seed(1)
    for B, S in itertools.product(BATCHES, SEQ_LENS):
        x = torch.randn(B, S, model.config.hidden_size)
        with torch.no_grad():
            out = arch.moe_block(hf, model.config, MoEDispatchConfig(dispatch, 4, 7))(x)
        assert rel_err(out, reference(hf, x)) <= TOL


# Exported: each core count, each kind of chunk size (1, 7, T, 2T) and each input shape at least once. The
# export unrolls every chunk of every slot, so the full eager grid would take many minutes to export; these
# 14 cases take about half a minute per architecture.
EXPORT_CASES = [  # (batch, seq, cores, chunk)
    (1, 1, 1, 1),
    (2, 1, E + 1, 1),
    (2, 1, 3, 4),
    (1, 5, 1, 1),
    (1, 5, 2, 7),
    (2, 5, 3, 1),
    (2, 5, 4, 10),
    (1, 5, E, 5),
    (2, 5, E + 1, 20),
    (1, 64, 4, 7),
    (2, 64, 3, 128),
    (1, 64, E, 64),
    (2, 64, E + 1, 256),
    (1, 64, 2, 128),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", EXPORT_CASES, ids=lambda c: "B{}-S{}-N{}-C{}".format(*c))
def test_blocked_exported(block, tmp_path, case):
    arch, model, hf = block
    B, S, N, C = case
    torch.manual_seed(2)
    x = torch.randn(B, S, model.config.hidden_size)
    qblock = arch.moe_block(hf, model.config, MoEDispatchConfig("blocked", N, C))
    path = export_onnx(qblock, (x,), tmp_path / "moe.onnx", ["hidden_states"], ["out"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"hidden_states": x.numpy()})[0]
    assert rel_err(out, reference(hf, x)) <= TOL


# Grouped: one batched MLP whatever the tile count, so the export is quick; each kind of tile size (1, one that
# does not divide T, T, 2T, auto) and each input shape at least once.
GROUPED_EXPORT_CASES = [  # (batch, seq, tile rows)
    (1, 1, 1),
    (2, 1, "auto"),
    (1, 5, 1),
    (2, 5, 3),
    (1, 5, 7),
    (2, 5, 20),
    (1, 64, 7),
    (2, 64, 33),
    (1, 64, 64),
    (2, 64, "auto"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", GROUPED_EXPORT_CASES, ids=lambda c: "B{}-S{}-C{}".format(*c))
def test_grouped_exported(block, tmp_path, case):
    arch, model, hf = block
    B, S, C = case
    torch.manual_seed(5)
    x = torch.randn(B, S, model.config.hidden_size)
    qblock = arch.moe_block(hf, model.config, MoEDispatchConfig("grouped", 4, C))
    path = export_onnx(qblock, (x,), tmp_path / "moe.onnx", ["hidden_states"], ["out"])
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"hidden_states": x.numpy()})
    assert rel_err(out[0], reference(hf, x)) <= TOL


def test_gathered_exported(block, tmp_path):
    arch, model, hf = block
    x = torch.randn(2, 1, model.config.hidden_size)
    qblock = arch.moe_block(hf, model.config, MoEDispatchConfig("gathered"))
    path = export_onnx(qblock, (x,), tmp_path / "moe_decode.onnx", ["hidden_states"], ["out"])
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"hidden_states": x.numpy()})
    assert rel_err(out[0], reference(hf, x)) <= TOL


def test_expert_weights_are_views_not_copies(block):
    """The rewritten block holds the transformers storage: no second copy of the expert weights."""
    arch, model, hf = block
    if isinstance(getattr(hf, "experts", None), torch.nn.ModuleList):
        pytest.skip("transformers 4.x keeps one module per expert: they are stacked once into [E, ...] tensors")
    qblock = arch.moe_block(hf, model.config, MoEDispatchConfig("blocked", 4, 7))
    expert_bytes = {p.untyped_storage().data_ptr() for p in qblock.experts.parameters()}
    hf_bytes = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    assert expert_bytes <= hf_bytes


def test_rewrite_moe_replaces_blocks_in_a_loaded_model(block):
    arch, model, hf = block
    torch.manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
        rewritten = arch.rewrite_moe(model, MoEDispatchConfig("blocked", 4, 3))
        out = rewritten(ids).logits
    assert "MoEBlock" in {type(m).__name__ for m in arch.decoder_layers(rewritten)[0].modules()}
    assert rel_err(out, ref) <= TOL
