"""``device="qaic"`` with several specializations per program, and with multi-device programs.

The QAIC SDK is proprietary and cannot be installed here: programs are "compiled" by the stand-in compiler and
run by the stand-in ``qaicrt`` (tests/standins/), which picks a specialization by the shapes of the bound
buffers as the runtime does. Our exported graphs are still static, so the specialization test uses a small
hand-built graph with the export's I/O contract and symbolic ``batch_size`` / ``seq_len`` / ``ctx_len``: its
retained state counts calls (each call adds 1 to every cache value) and its logits are the sum of the cache
it read, which makes where the cache lives, and at which context length, visible in the numbers.
"""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import optimum_cli, read_json
from onnx import TensorProto, helper
from standins import install_tool, sdk_importable
from transformers import AutoTokenizer

from optimum_qaic_moe import QAICModelForCausalLM, compiler
from optimum_qaic_moe.runtime.runner import CausalLMRunner
from optimum_qaic_moe.settings import ExportSettings, UserError

KV_HEADS, HEAD_DIM, VOCAB = 2, 4, 8


def counting_graph(path):
    """logits [B, 1, V] = sum of past_key per row; *_RetainedState = past + 1."""
    kv = ["batch_size", KV_HEADS, "ctx_len", HEAD_DIM]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "seq_len"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "seq_len"]),
    ]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv) for n in ("past_key.0", "past_value.0")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 1, VOCAB])]
    outputs += [
        helper.make_tensor_value_info(f"{n}_RetainedState", TensorProto.FLOAT, kv)
        for n in ("past_key.0", "past_value.0")
    ]
    consts = [
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("spread", TensorProto.FLOAT, [1, 1, VOCAB], [1.0] * VOCAB),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["past_key.0", "axes"], ["total"], keepdims=0),  # [B]
        helper.make_node("Unsqueeze", ["total", "axes_12"], ["total3"]),  # [B, 1, 1]
        helper.make_node("Mul", ["total3", "spread"], ["logits"]),
        helper.make_node("Add", ["past_key.0", "one"], ["past_key.0_RetainedState"]),
        helper.make_node("Add", ["past_value.0", "one"], ["past_value.0_RetainedState"]),
    ]
    consts.append(helper.make_tensor("axes_12", TensorProto.INT64, [2], [1, 2]))
    graph = helper.make_graph(nodes, "counting", inputs, outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def write_program(export_dir, graph, specializations):
    d = os.path.join(export_dir, graph)
    os.makedirs(d)
    counting_graph(os.path.join(export_dir, f"{graph}.onnx"))
    with open(os.path.join(d, "specializations.json"), "w") as f:
        json.dump({"specializations": [{k: str(v) for k, v in s.items()} for s in specializations]}, f)
    with open(os.path.join(d, "custom_io.yaml"), "w") as f:
        f.writelines(
            f"- IOName: {name}\n  Precision: float16\n"
            for name in ("past_key.0", "past_value.0", "past_key.0_RetainedState", "past_value.0_RetainedState")
        )


@pytest.fixture
def two_programs(tmp_path, monkeypatch):
    """A compiled export whose prefill program has ctx 32 and 64, and whose decode program has ctx 64 at batch
    1 and 2, and ctx 128: the only (context, batch) both share is (64, 1)."""
    out = tmp_path / "export"
    write_program(out, "prefill", [{"batch_size": 1, "seq_len": 4, "ctx_len": c} for c in (32, 64)])
    write_program(
        out, "decode", [{"batch_size": b, "seq_len": 1, "ctx_len": c} for b, c in ((1, 64), (2, 64), (1, 128))]
    )
    settings = ExportSettings(
        model="m",
        output=str(out),
        prefill_seq_len=4,
        ctx_len=128,
        compile="always",
        compiler=install_tool(tmp_path / "bin"),
    )
    meta = {
        "graphs": ["prefill", "decode"],
        "settings": settings.to_dict(),
        "pad_token_id": 0,
        "cache_shapes": {n: [1, KV_HEADS, 128, HEAD_DIM] for n in ("past_key.0", "past_value.0")},
    }
    (out / "qaic_config.json").write_text(json.dumps(meta))
    monkeypatch.setenv("OPTIMUM_QAIC_MOE_CACHE", str(tmp_path / "cache"))
    compiler.compile_export(str(out), settings, compiler.resolve_backend(settings), say=lambda m: None)
    return str(out)


def test_specialization_chosen_by_shape_and_the_cache_stays_resident(two_programs, monkeypatch):
    qaicrt = sdk_importable(monkeypatch)
    runner = CausalLMRunner(two_programs, device="qaic")
    assert (runner.batch_size, runner.prefill_seq_len, runner.ctx_len) == (1, 4, 64)  # from the programs
    per_call = KV_HEADS * 64 * HEAD_DIM  # the cache sum grows by this per call: ctx 64, not 32 or 128
    assert runner.prefill(np.array([[1, 2, 3]]))[0, 0] == 0  # first use: zeros
    for step in range(1, 5):  # decode reads the prefill program's cache (handed over once), then its own
        before = dict(qaicrt.traffic)
        assert runner.decode(np.array([5]), np.array([2 + step]))[0, 0] == step * per_call
        kv = 2 * per_call * 2 if step == 1 else 0  # float16 past_key + past_value, written once
        assert qaicrt.traffic["to_device"] - before["to_device"] == 16 + kv
    decode = runner.kv.sessions["decode"].program
    assert {n: list(v.shape) for n, v in decode.state.items()} == {
        n: [1, KV_HEADS, 64, HEAD_DIM] for n in ("past_key.0", "past_value.0")
    }
    with pytest.raises(UserError, match="position 64 does not fit the context of 64 tokens"):
        runner.decode(np.array([5]), np.array([64]))


def test_programs_sharing_no_shape_are_a_clear_error(two_programs, monkeypatch):
    sdk_importable(monkeypatch)
    shutil.rmtree(os.path.join(two_programs, "decode"))
    write_program(two_programs, "decode", [{"batch_size": 2, "seq_len": 1, "ctx_len": 64}])
    settings = ExportSettings(
        model="m", decode_only=True, compile="always", compiler=install_tool(os.path.join(two_programs, "..", "bin"))
    )
    compiler.compile_export(two_programs, settings, compiler.resolve_backend(settings), say=lambda m: None)
    with pytest.raises(
        UserError,
        match=r"the compiled programs share no \(context length, batch size\): "
        r"prefill: \[\(32, 1\), \(64, 1\)\]; decode: \[\(64, 2\)\]",
    ):
        CausalLMRunner(two_programs, device="qaic")


@pytest.mark.slow
def test_multi_device_programs(tmp_path, tiny_dirs, monkeypatch):
    out = tmp_path / "out"
    optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs["qwen3_moe"],
        "--prefill-seq-len",
        8,
        "--ctx-len",
        64,
        "--num-cores",
        2,
        "--no-verify",
        "--num-devices",
        2,
        "--compile",
        "always",
        "--compiler",
        install_tool(tmp_path / "bin"),
        out,
        check=True,
        env={"OPTIMUM_QAIC_MOE_CACHE": str(tmp_path / "cache")},
    )
    assert read_json(out / "decode" / "qpc" / "standin" / "program.json")["num_devices"] == 2
    qaicrt = sdk_importable(monkeypatch)

    def placement():
        return {
            d: sorted(os.path.basename(os.path.dirname(p)) for p in progs)
            for d, progs in qaicrt.active.items()
            if progs
        }

    with pytest.raises(
        UserError,
        match=r"the prefill program was compiled for 2 devices \(--num-devices 2\): "
        r"give 2 device ids, got \[0\]",
    ):
        CausalLMRunner(str(out), device="qaic", device_ids=[0])
    runner = CausalLMRunner(str(out), device="qaic")  # default: devices 0..N-1 for both
    assert placement() == {0: ["decode", "prefill"], 1: ["decode", "prefill"]}
    assert runner.kv.sessions["decode"].program.properties.devMapping == "0:1"
    runner.close()

    tok = AutoTokenizer.from_pretrained(str(out))
    enc = tok("the cat is on the red house and the dog", return_tensors="pt")
    card = QAICModelForCausalLM.from_pretrained(
        str(out), device="qaic", device_ids={"prefill": [0, 1], "decode": [2, 3]}
    )
    assert placement() == {0: ["prefill"], 1: ["prefill"], 2: ["decode"], 3: ["decode"]}
    expected = QAICModelForCausalLM.from_pretrained(str(out)).generate(**enc, max_new_tokens=12, do_sample=False)
    assert torch.equal(card.generate(**enc, max_new_tokens=12, do_sample=False), expected)
