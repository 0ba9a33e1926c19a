"""``device="qaic"``: the compiled programs on the card, with the KV cache resident there.

The QAIC platform SDK (compiler and runtime) is proprietary and cannot be installed here, so these tests run
against stand-ins (tests/standins/): ``qaic-compile`` leaves the ONNX graph in ``qpc/``, and ``qaicrt`` runs it
in onnxruntime, keeps retained state as "device memory" and counts every byte that crosses between host and
device. Everything else is real: the exports, our runtime code, transformers' generate, onnxruntime.
"""

import os
import shutil

import numpy as np
import pytest
import torch
from conftest import ARCHS, read_json
from standins import install_tool, sdk_importable
from transformers import AutoTokenizer

from optimum_qaic_moe import QAICModelForCausalLM
from optimum_qaic_moe.runtime.runner import CausalLMRunner
from optimum_qaic_moe.settings import ExportSettings, UserError

PROMPTS = ["the cat is on the red house and the dog is in the old car by the river", "a sun"]


def compile_with_standin(export_dir, bin_dir, cache_dir):
    """Compile an export in place with the stand-in compiler, through our compile step."""
    from optimum_qaic_moe import compiler

    settings = ExportSettings.from_dict(read_json(os.path.join(export_dir, "qaic_config.json"))["settings"])
    settings.compile, settings.compiler = "always", install_tool(bin_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTIMUM_QAIC_MOE_CACHE", str(cache_dir))
        compiler.compile_export(str(export_dir), settings, compiler.resolve_backend(settings), say=lambda m: None)


@pytest.fixture(scope="module")
def compiled(exports, tmp_path_factory):
    """{arch: a copy of the shared CLI export (prefill 8, ctx 64, batch 1), compiled by the stand-in}."""
    root = tmp_path_factory.mktemp("compiled")
    out = {}
    for arch, (src, _) in exports.items():
        shutil.copytree(src, root / arch)
        compile_with_standin(root / arch, root / "bin", root / "cache")
        out[arch] = str(root / arch)
    return out


@pytest.fixture
def qaicrt(monkeypatch):
    return sdk_importable(monkeypatch)


def kv_bytes(export_dir):
    """Bytes of the whole KV cache at the program's I/O type (float16 in custom_io.yaml)."""
    shapes = CausalLMRunner(export_dir, low_memory=True).kv.cache_shapes.values()
    return sum(int(np.prod(s)) * 2 for s in shapes)


def moved(qaicrt, before):
    return {k: qaicrt.traffic[k] - before[k] for k in ("to_device", "from_device")}


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_on_the_card_matches_onnxruntime(compiled, qaicrt, arch):
    tok = AutoTokenizer.from_pretrained(compiled[arch])
    cpu = QAICModelForCausalLM.from_pretrained(compiled[arch])
    card = QAICModelForCausalLM.from_pretrained(compiled[arch], device="qaic")
    for prompt in PROMPTS:  # the second request runs over the first one's cache left on the card
        enc = tok(prompt, return_tensors="pt")
        expected = cpu.generate(**enc, max_new_tokens=20, do_sample=False)
        assert torch.equal(card.generate(**enc, max_new_tokens=20, do_sample=False), expected)
    assert qaicrt.traffic["executions"] > 40


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_on_the_card(compiled, qaicrt, arch):
    """Prefill logits equal onnxruntime's exactly (the same graph, nothing converted). The cache reaches the
    decode program in float16, the programs' I/O type, so decode logits carry that one rounding (2^-11 of each
    cache value), nothing more."""
    cpu, card = CausalLMRunner(compiled[arch]), CausalLMRunner(compiled[arch], device="qaic")
    ids = np.random.default_rng(1).integers(0, 90, size=(1, 19))  # 3 chunks of 8, the last padded
    expected, got = cpu.prefill(ids), card.prefill(ids)
    assert np.array_equal(got, expected)
    token = expected.argmax(-1)
    for position in range(19, 27):
        expected, got = cpu.decode(token, [position]), card.decode(token, [position])
        assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()
        token = expected.argmax(-1)


def test_decode_moves_token_ids_positions_and_logits_only(compiled, qaicrt):
    export_dir = compiled["gpt_oss"]
    runner = CausalLMRunner(export_dir, device="qaic")
    vocab, cache = read_json(os.path.join(export_dir, "config.json"))["vocab_size"], kv_bytes(export_dir)
    ids_and_positions, logits = 2 * 8, vocab * 4  # int64 [1, 1] twice in; float32 [1, 1, V] out
    rng = np.random.default_rng(2)
    for request in range(3):
        before = dict(qaicrt.traffic)
        logits0 = runner.prefill(rng.integers(0, vocab, size=(1, 12)))  # 2 chunks of 8
        sent_zeros = cache if request == 0 else 0  # a program's first use starts its cache from zeros
        # the prefill program's cache is read out once, after the last chunk, for the decode program
        assert moved(qaicrt, before) == {"to_device": 2 * 8 * 8 * 2 + sent_zeros, "from_device": 2 * logits + cache}
        token = logits0.argmax(-1)
        for step in range(6):
            before = dict(qaicrt.traffic)
            token = runner.decode(token, [12 + step]).argmax(-1)
            handed_over = cache if step == 0 else 0  # written into the decode program once per request
            assert moved(qaicrt, before) == {"to_device": ids_and_positions + handed_over, "from_device": logits}


def test_programs_on_their_own_device_groups(compiled, qaicrt):
    card = CausalLMRunner(
        compiled["qwen3_moe"], device="qaic", device_ids={"prefill": [2], "decode": [3]}, data_path_timeout_ms=5000
    )
    assert {
        d: [os.path.basename(os.path.dirname(p)) for p in progs] for d, progs in qaicrt.active.items() if progs
    } == {2: ["prefill"], 3: ["decode"]}
    for session in card.kv.sessions.values():
        assert session.program.properties.dataPathTimeoutMs == 5000
    card.prefill(np.array([[5, 6, 7]]))
    card.close()
    assert not any(qaicrt.active.values())


def test_device_errors_are_one_clear_line(compiled, exports, qaicrt):
    with pytest.raises(UserError, match=r"no compiled program in .*/prefill/qpc: compile first"):
        CausalLMRunner(exports["qwen3_moe"][0], device="qaic")
    with pytest.raises(UserError, match="device_ids for the decode program must be non-negative integers"):
        CausalLMRunner(compiled["qwen3_moe"], device="qaic", device_ids={"decode": [-1]})
    with pytest.raises(UserError, match="device_ids names encode, but this export has only prefill, decode"):
        CausalLMRunner(compiled["qwen3_moe"], device="qaic", device_ids={"encode": [0]})
    with pytest.raises(UserError, match="device_ids applies to device='qaic' only"):
        CausalLMRunner(compiled["qwen3_moe"], device_ids=[0])


def test_an_empty_prompt_is_one_clear_error(exports):
    """A prompt of no tokens runs no prefill chunk, so there are no logits to return."""
    runner = CausalLMRunner(exports["qwen3_moe"][0], low_memory=True)
    with pytest.raises(UserError, match="empty prompt: input_ids has no tokens; give at least one token per row"):
        runner.prefill(np.zeros((1, 0), dtype=np.int64))


@pytest.mark.slow
def test_left_padded_batch_on_the_card(tiny_dirs, tmp_path, monkeypatch):
    """Export and compile through from_pretrained(device="qaic"); two batches in a row, the second over the first
    one's cache left on the card, equal onnxruntime's tokens."""
    qaicrt = sdk_importable(monkeypatch)
    monkeypatch.setenv("OPTIMUM_QAIC_MOE_CACHE", str(tmp_path / "cache"))
    model_dir = tiny_dirs["gpt_oss"]
    card = QAICModelForCausalLM.from_pretrained(
        model_dir,
        export=True,
        device="qaic",
        batch_size=2,
        prefill_seq_len=8,
        ctx_len=64,
        num_cores=4,
        verify=False,
        compiler=install_tool(tmp_path / "bin"),
        output=str(tmp_path / "x"),
    )
    cpu = QAICModelForCausalLM.from_pretrained(str(tmp_path / "x"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    for prompts in (PROMPTS, ["a dog by the river", "the old red car is in the house of the cat and the sun"]):
        enc = tok(prompts, return_tensors="pt", padding=True)
        expected = cpu.generate(**enc, max_new_tokens=16, do_sample=False)
        assert torch.equal(card.generate(**enc, max_new_tokens=16, do_sample=False), expected)
    assert qaicrt.traffic["executions"] >= 2 * 16
