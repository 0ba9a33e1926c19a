"""`optimum-cli export qaic` end to end, per architecture, checked against transformers with onnxruntime.

The decode loop here drives the raw graph contract (names, shapes, RetainedState fed back as past) directly
with onnxruntime, independent of the package's own runner."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import ARCHS, optimum_cli, read_json
from transformers import AutoModelForCausalLM

QAIC_DOMAIN = "com.qualcomm.cloud"
PREFILL, CTXS = 8, (32, 64)  # the shared export serves both context lengths with one graph
CTX = 64


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, exports, tiny_dirs):
    out, proc = exports[request.param]
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[request.param], dtype=torch.float32).eval()
    return request.param, out, proc, hf


def test_layout_and_side_files(exported):
    arch, out, proc, hf = exported
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "qaic_config.json",
        "compile.sh",
        "prefill.onnx",
        "decode.onnx",
        "weights.data",
    ):
        assert os.path.isfile(os.path.join(out, name)), name
    meta = read_json(os.path.join(out, "qaic_config.json"))
    assert meta["model_type"] == arch
    assert meta["settings"]["num_cores"] == 4 and meta["settings"]["moe_prefill_packed_chunk_size"] == 5
    assert meta["versions"]["torch"] and meta["versions"]["transformers"]
    window = {"sliding_window": "8"} if arch == "gpt_oss" else {}  # the tiny GPT-OSS's window, below the context
    for graph in ("prefill", "decode"):
        spec = read_json(os.path.join(out, graph, "specializations.json"))
        batch = {"batch_size": "1"} if graph == "decode" else {}  # the prefill graph's batch is static
        assert spec == {"specializations": [{**batch, "ctx_len": str(ctx), **window} for ctx in CTXS]}
        model = onnx.load(os.path.join(out, f"{graph}.onnx"), load_external_data=False)
        symbols = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
        assert symbols == set(spec["specializations"][0])  # every symbolic dim bound, nothing else named
        custom_io = yaml.safe_load(open(os.path.join(out, graph, "custom_io.yaml")))
        names = [entry["IOName"] for entry in custom_io]
        layers = hf.config.num_hidden_layers
        expected = [f"past_{kv}.{i}" for i in range(layers) for kv in ("key", "value")]
        assert names == expected + [n + "_RetainedState" for n in expected]
        assert {entry["Precision"] for entry in custom_io} == {"float16"}
    assert "[qaic] verify:" in proc.stderr and "[qaic] trace the prefill graph" in proc.stderr
    assert "[qaic] verify fp16 (as -convert-to-fp16 runs it): finite" in proc.stderr


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_graph_passes_checker_and_keeps_custom_ops(exported, graph):
    arch, out, _, hf = exported
    path = os.path.join(out, f"{graph}.onnx")
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path, load_external_data=False)
    layer_functions = [f for f in model.functions if f.domain == "optimum_qaic_moe.layers"]
    calls = [n for n in model.graph.node if n.domain == "optimum_qaic_moe.layers"]
    assert len(calls) == hf.config.num_hidden_layers  # one call per layer ...
    assert {n.op_type for n in calls} == {f.name for f in layer_functions}  # ... of one function per kind
    assert len(layer_functions) == (2 if arch == "gpt_oss" else 1)  # GPT-OSS: sliding and full layers
    inner = [n for f in layer_functions for n in f.node]
    used = {n.op_type for n in inner if n.domain == QAIC_DOMAIN}
    assert {"CtxScatter", "CtxGather"} <= used
    if graph == "prefill":
        assert {"CtxScatter3D", "CtxScatter3DInt", "CtxGather3D"} <= used  # the blocked MoE dispatch
    assert used <= {f.name for f in model.functions if f.domain == QAIC_DOMAIN}
    assert any(n.op_type == "CustomRMSNorm" and n.domain == "com.qti.aisw.onnx" for n in model.graph.node)
    every = list(model.graph.node) + inner
    assert not {"Sin", "Cos"} & {n.op_type for n in every}  # RoPE from tables, not angles computed in fp16
    # weights live once, in weights.data, for both graphs
    assert {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"} == {
        "weights.data"
    }
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_decode_uses_gathered_expert_weights_as_they_are(exported):
    """The decode graph gathers its tokens' expert weights, laid out [E, in, out] at export (GPT-OSS's gate/up
    columns already split): no Transpose or strided Slice per step."""
    arch, out, _, _ = exported
    model = onnx.load(os.path.join(out, "decode.onnx"), load_external_data=False)
    for f in model.functions:
        if f.domain != "optimum_qaic_moe.layers":
            continue
        weights = {name for name in f.input if ".experts." in name}
        gathered = {n.output[0] for n in f.node if n.op_type == "Gather" and n.input[0] in weights}
        assert len(gathered) >= 3  # gate, up, down (and biases)
        consumers = {n.op_type for n in f.node if set(n.input) & gathered}
        assert consumers <= {"MatMul", "Add", "Unsqueeze"}, consumers


def test_no_float_constant_outside_fp16_range(exported):
    """Converted to fp16 a constant beyond 65504 becomes inf (float32's lowest value as a mask floor did)."""
    arch, out, _, _ = exported
    from onnx import numpy_helper

    for graph in ("prefill", "decode"):
        model = onnx.load(os.path.join(out, f"{graph}.onnx"), load_external_data=False)
        nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
        values = [numpy_helper.to_array(t) for t in model.graph.initializer if not t.external_data]
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    values.append(numpy_helper.to_array(attr.t))
                elif attr.type == onnx.AttributeProto.FLOAT:
                    values.append(np.array(attr.f))
        floats = [v for v in values if v.dtype.kind == "f" and v.size]
        assert floats and max(float(np.abs(v).max()) for v in floats) <= 65504


def _sessions(out):
    return {
        g: ort.InferenceSession(os.path.join(out, f"{g}.onnx"), providers=["CPUExecutionProvider"])
        for g in ("prefill", "decode")
    }


def _empty_cache(session, ctx=CTX, window=8):
    """Zero caches for one context length: the graph's symbolic dims bound as specializations.json binds them."""
    bind = {"batch_size": 1, "ctx_len": ctx, "sliding_window": min(window, ctx)}
    return {
        i.name: np.zeros([bind.get(d, d) for d in i.shape], dtype=np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_")
    }


def _run(session, cache, ids, pos):
    outputs = [o.name for o in session.get_outputs()]
    result = dict(zip(outputs, session.run(None, {"input_ids": ids, "position_ids": pos, **cache})))
    return result["logits"][:, -1], {n: result[n + "_RetainedState"] for n in cache}


@pytest.mark.parametrize("ctx", CTXS)
def test_one_graph_serves_each_context_length(exported, ctx):
    """The same prefill and decode graphs, run with caches of each exported context length, match transformers."""
    arch, out, _, hf = exported
    sessions = _sessions(out)
    ids = np.random.default_rng(0).integers(0, hf.config.vocab_size, (1, PREFILL + 3))
    logits, cache = _run(
        sessions["prefill"], _empty_cache(sessions["prefill"], ctx), ids[:, :PREFILL], np.arange(PREFILL)[None]
    )
    for t in range(PREFILL, PREFILL + 3):
        logits, cache = _run(sessions["decode"], cache, ids[:, t : t + 1], np.array([[t]]))
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits[:, -1].numpy()
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)


def test_chunked_prefill_and_greedy_decode_match_transformers(exported):
    """A prompt of 19 tokens runs as 3 prefill chunks of 8 (the last padded with position -1), then 16 greedy
    decode steps feed *_RetainedState back as past_*: the tokens equal transformers' greedy generate."""
    arch, out, _, hf = exported
    sessions = _sessions(out)
    prompt = np.random.default_rng(1).integers(4, hf.config.vocab_size, (1, 19))
    cache = _empty_cache(sessions["prefill"])
    n = prompt.shape[1]
    for start in range(0, n, PREFILL):
        ids = np.zeros((1, PREFILL), dtype=np.int64)
        pos = np.full((1, PREFILL), -1, dtype=np.int64)
        chunk = prompt[:, start : start + PREFILL]
        ids[:, : chunk.shape[1]] = chunk
        pos[:, : chunk.shape[1]] = np.arange(start, start + chunk.shape[1])
        logits, cache = _run(sessions["prefill"], cache, ids, pos)
    tokens = []
    for step in range(16):
        nxt = logits.argmax(-1)
        tokens.append(int(nxt[0]))
        logits, cache = _run(sessions["decode"], cache, nxt[:, None].astype(np.int64), np.array([[n + step]]))
    with torch.no_grad():
        ref = hf.generate(
            torch.from_numpy(prompt),
            attention_mask=torch.ones_like(torch.from_numpy(prompt)),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert tokens == ref[0, n:].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("flag, graphs", [("--prefill-only", ["prefill"]), ("--decode-only", ["decode"])])
def test_single_graph_exports(tmp_path, tiny_dirs, flag, graphs):
    out = tmp_path / "out"
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs["gpt_oss"],
        "--prefill-seq-len",
        4,
        "--ctx-len",
        32,
        "--num-cores",
        3,
        "--moe-prefill-packed-chunk-size",
        3,
        flag,
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p for p in os.listdir(out) if os.path.isdir(out / p)) == graphs
    assert sorted(p for p in os.listdir(out) if p.endswith(".onnx")) == [f"{g}.onnx" for g in graphs]
    assert read_json(out / "qaic_config.json")["graphs"] == graphs
    assert "[qaic] verify:" in proc.stderr  # verification runs on whichever graph exists


@pytest.mark.slow
def test_mxint8_kv_cache_precision(tmp_path, tiny_dirs):
    out = tmp_path / "out"
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs["qwen3_moe"],
        "--prefill-seq-len",
        4,
        "--ctx-len",
        16,
        "--num-cores",
        2,
        "--decode-only",
        "--no-verify",
        "--mxint8-kv-cache",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    custom_io = yaml.safe_load(open(out / "decode" / "custom_io.yaml"))
    assert {entry["Precision"] for entry in custom_io} == {"mxint8"}
    assert "[qaic] verify:" not in proc.stderr


@pytest.mark.slow
def test_unloadable_checkpoint_leaves_no_artifacts(tmp_path, tiny_dirs):
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text(open(os.path.join(tiny_dirs["qwen3_moe"], "config.json")).read())
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "out"
    proc = optimum_cli("export", "qaic", "--model", model, out)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "model.safetensors is not a readable safetensors file" in last
    assert sorted(os.listdir(tmp_path)) == ["broken"]
