"""The graphs as the card runs them: fp16 (``-convert-to-fp16``) and a KV cache whose empty slots hold garbage.

The emulation (optimum_qaic_moe.exporters.fp16) rounds every value the device holds in fp16; these tests show it
catching the hazards of the earlier graphs, and the current graphs free of them."""

import os

import numpy as np
import pytest
import torch

from optimum_qaic_moe.architectures import base
from optimum_qaic_moe.exporters.fp16 import emulate_fp16
from optimum_qaic_moe.exporters.main import run_export
from optimum_qaic_moe.exporters.verify import prompt_for, run_graphs
from optimum_qaic_moe.ops import INT32_MAX, ctx_gather, ctx_scatter
from optimum_qaic_moe.runtime.runner import CausalLMRunner
from optimum_qaic_moe.settings import ExportSettings, UserError


def earlier_attention(q, k, v, past_k, past_v, position_ids, scaling, sliding_window=None, sinks=None):
    """The attention of the first release, kept verbatim where it matters: float32's lowest value as the mask
    floor, and neither empty cache slots nor padded chunk rows zeroed."""
    B, Hq, S, D = q.shape
    L = past_k.shape[2]
    valid = position_ids >= 0
    no_pos = torch.iinfo(torch.int64).max
    start = torch.where(valid, position_ids, no_pos).min(1, keepdim=True).values
    start = torch.where(start == no_pos, 0, start)
    last = torch.where(valid, position_ids, -1).max(1, keepdim=True).values
    slots = torch.arange(L, device=q.device)
    L_t = torch.full((), L, dtype=torch.int64, device=q.device)
    slot_pos = start - 1 - torch.remainder(start - 1 - slots, L_t)
    slot_valid = slot_pos >= 0
    read = torch.where(slot_valid, slots, INT32_MAX)
    keys = torch.cat([ctx_gather(past_k, read), k], dim=2)
    values = torch.cat([ctx_gather(past_v, read), v], dim=2)
    key_pos = torch.cat([slot_pos, position_ids], dim=1)
    key_valid = torch.cat([slot_valid, valid], dim=1)
    visible = key_valid.unsqueeze(1) & (key_pos.unsqueeze(1) <= position_ids.unsqueeze(-1))
    if sliding_window is not None:
        visible = visible & (key_pos.unsqueeze(1) > position_ids.unsqueeze(-1) - sliding_window)
    groups = Hq // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, keys.transpose(2, 3)) * scaling
    scores = torch.where(visible.unsqueeze(1), scores, torch.finfo(scores.dtype).min)
    if sinks is not None:
        scores = torch.cat([scores, sinks.reshape(1, Hq, 1, 1).expand(B, Hq, S, 1)], dim=-1)
        probs = torch.softmax(scores - scores.max(dim=-1, keepdim=True).values, dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, values).transpose(1, 2).reshape(B, S, Hq * D)
    keep = valid & (position_ids > last - L)
    write = torch.where(keep, torch.remainder(position_ids, L_t), INT32_MAX)
    return out, ctx_scatter(past_k, write, k), ctx_scatter(past_v, write, v)


def _settings(model, out, **kw):
    return ExportSettings(
        model=model,
        output=str(out),
        prefill_seq_len=8,
        ctx_len=64,
        num_cores=4,
        moe_prefill_packed_chunk_size=5,
        compile="never",
        **kw,
    )


def _fp16_runner(out, settings):
    files = {g: os.path.join(out, f"{g}.fp16.onnx") for g in settings.graphs}
    for g, path in files.items():
        emulate_fp16(os.path.join(out, f"{g}.onnx"), path)
    return CausalLMRunner(str(out), low_memory=True, graph_files=files)


@pytest.mark.slow
def test_emulation_catches_the_earlier_mask_floor(tiny_dirs, tmp_path, monkeypatch):
    """A padded last prefill chunk (almost every prompt): in fp16 the float32 floor is -inf, the padded rows
    softmax to NaN, and 0 * NaN through the unzeroed padded keys reaches the valid rows. fp32 never shows it.
    (GPT-OSS's attention sinks give every row one finite logit, so its padded rows did not turn NaN.)"""
    arch = "qwen3_moe"
    monkeypatch.setattr(base, "kv_cache_attention", earlier_attention)
    settings = _settings(tiny_dirs[arch], tmp_path / "earlier", verify=False)
    out = run_export(settings)
    prompt = prompt_for(settings, 90)  # 13 tokens: the second chunk of 8 is padded
    fp32 = run_graphs(CausalLMRunner(out, low_memory=True), prompt, 2)
    assert all(np.isfinite(x).all() for x in fp32.logits)
    fp16 = run_graphs(_fp16_runner(out, settings), prompt, 2, fp32.tokens)
    assert not all(np.isfinite(x).all() for x in fp16.logits)
    # the built-in verification refuses such an export
    with pytest.raises(UserError, match="non-finite logits when run in fp16"):
        run_export(_settings(tiny_dirs[arch], tmp_path / "earlier-verified", verify=True))


def test_garbage_in_empty_cache_slots_does_not_reach_valid_rows(exports):
    """On the card, slots that hold no position yet may hold anything, NaN included."""
    for arch, (out, _) in exports.items():
        runner = CausalLMRunner(out, low_memory=True)
        prompt = np.arange(4, 17)[None]
        clean = runner.prefill(prompt)
        kv = runner.kv
        kv.start = lambda kv=kv: setattr(
            kv, "cache", {n: np.full(s, np.nan, np.float32) for n, s in kv.cache_shapes.items()}
        )
        dirty = runner.prefill(prompt)
        np.testing.assert_array_equal(dirty, clean)
        nxt = clean.argmax(-1)
        assert np.isfinite(runner.decode(nxt, np.array([prompt.shape[1]]))).all(), arch


def _fp16_logits(out, prompt, tokens):
    meta_graphs = [g for g in ("prefill", "decode") if os.path.exists(os.path.join(out, f"{g}.onnx"))]
    files = {g: os.path.join(out, f"{g}.fp16.onnx") for g in meta_graphs}
    for g, path in files.items():
        emulate_fp16(os.path.join(out, f"{g}.onnx"), path)
    run = run_graphs(CausalLMRunner(str(out), low_memory=True, graph_files=files), prompt, len(tokens), tokens)
    for path in files.values():
        os.remove(path)
    return run.logits


def test_weights_are_rounded_where_they_are_read(exports, tmp_path, monkeypatch):
    """The emulation rounds a weight only where its values are read (data movement such as the experts' Slice and
    Gather reads it unrounded, its output rounded): the same logits, to the bit, as an export whose weights.data
    already holds fp16 values; a MatMul by a large weight split into column blocks changes nothing either; and no
    Cast reads a whole [E, ...] expert tensor."""
    import shutil

    import onnx_ir as ir

    from optimum_qaic_moe.exporters import fp16

    prompt = np.arange(3, 16)[None]
    tokens = [np.array([5]), np.array([7])]
    for arch, (out, _) in exports.items():
        rounded = tmp_path / arch
        shutil.copytree(out, rounded)
        data = np.memmap(rounded / "weights.data", dtype=np.float32, mode="r+")
        data[:] = data.astype(np.float16).astype(np.float32)
        data.flush()
        del data
        plain = _fp16_logits(out, prompt, tokens)
        for a, b in zip(plain, _fp16_logits(rounded, prompt, tokens)):
            np.testing.assert_array_equal(a, b, err_msg=arch)
        monkeypatch.setattr(fp16, "SPLIT_BYTES", 256)  # every MatMul by a weight runs in column blocks
        for a, b in zip(plain, _fp16_logits(out, prompt, tokens)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=arch)
        monkeypatch.undo()

        emulate_fp16(os.path.join(out, "prefill.onnx"), str(tmp_path / f"{arch}-prefill.fp16.onnx"))
        model = ir.load(str(tmp_path / f"{arch}-prefill.fp16.onnx"))
        for function in model.functions.values():
            for value in function.inputs:
                if "experts" in value.name:
                    readers = {user.op_type for user, _ in value.uses()}
                    assert readers and "Cast" not in readers, (arch, value.name, readers)


def test_every_float_value_inside_the_layer_functions_is_rounded(exports, tmp_path):
    """Function bodies come from the exporter with many values untyped (no value_info); the emulation gives them
    their element types first, so no float value a decoder layer computes escapes rounding: every float node
    output in a layer function is read only by its Cast to fp16."""
    import onnx_ir as ir

    from optimum_qaic_moe.exporters.layers import LAYER_DOMAIN

    for arch, (out, _) in exports.items():
        for graph in ("prefill", "decode"):
            path = tmp_path / f"{arch}-{graph}.fp16.onnx"
            emulate_fp16(os.path.join(out, f"{graph}.onnx"), str(path))
            for function in ir.load(str(path)).functions.values():
                if function.domain != LAYER_DOMAIN:
                    continue
                for node in function.graph:
                    to = node.attributes["to"].value if node.op_type == "Cast" else None
                    source = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
                    to16 = to == ir.DataType.FLOAT16
                    is_rounding = to16 or (
                        to == ir.DataType.FLOAT
                        and source is not None
                        and source.op_type == "Cast"
                        and source.attributes["to"].value == ir.DataType.FLOAT16
                    )
                    for value in node.outputs:
                        dtype = getattr(value.type, "dtype", None)
                        if node.op_type == "SplitToSequence" or to16:
                            continue  # a sequence; the fp16 half of a rounding pair
                        assert value.type is not None, (arch, graph, node.op_type, value.name)
                        if dtype != ir.DataType.FLOAT or not value.uses() or is_rounding:
                            continue
                        readers = {
                            (u.op_type, u.attributes["to"].value if u.op_type == "Cast" else None)
                            for u, _ in value.uses()
                        }
                        assert readers == {("Cast", ir.DataType.FLOAT16)}, (arch, graph, node.op_type, readers)
