"""QAICModelForCausalLM on the onnxruntime reference runtime, used as a transformers user uses a model: generate
(token for token equal to transformers), forward, pipeline, streamers, any batch size, save/push, and clear errors
for what the fixed graphs cannot do."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ARCHS
from hub_standins import UploadStandIn
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from optimum_qaic_moe import QAICModelForCausalLM
from optimum_qaic_moe.settings import UserError

PROMPTS = ["the cat is on the red house and the dog is in the old car by the river", "a sun"]


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tiny_dirs, tmp_path_factory):
    """(tokenizer, transformers model, QAIC model for batch 2): prefill 8 so the long prompt takes 3 chunks."""
    model_dir = tiny_dirs[request.param]
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    qaic = QAICModelForCausalLM.from_pretrained(
        model_dir,
        export=True,
        batch_size=2,
        prefill_seq_len=8,
        ctx_len=64,
        num_cores=4,
        moe_prefill_packed_chunk_size=5,
        verify=False,
    )
    return tok, hf, qaic


@pytest.fixture(scope="module")
def single(exports, tiny_dirs):
    """(tokenizer, transformers model, QAIC model for batch 1, export dir): the CLI's Qwen3-MoE export."""
    out, _ = exports["qwen3_moe"]
    tok = AutoTokenizer.from_pretrained(tiny_dirs["qwen3_moe"])
    tok.padding_side = "left"
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["qwen3_moe"], dtype=torch.float32).eval()
    return tok, hf, QAICModelForCausalLM.from_pretrained(out), out


def _greedy(model, enc, **kwargs):
    return model.generate(**enc, max_new_tokens=20, do_sample=False, **kwargs)


@pytest.mark.slow
def test_left_padded_batch_matches_transformers(pair):
    tok, hf, qaic = pair
    enc = tok(PROMPTS, return_tensors="pt", padding=True)  # one prompt longer than prefill, one shorter
    assert enc["input_ids"].shape[1] > 8 and int(enc["attention_mask"][1].sum()) < 8
    assert torch.equal(_greedy(qaic, enc), _greedy(hf, enc))


@pytest.mark.slow
def test_batches_smaller_and_larger_than_exported_match_transformers(pair):
    """The graphs take 2 rows: 1 prompt is padded up, 3 prompts run as two groups, each with its own cache."""
    tok, hf, qaic = pair
    enc = tok(PROMPTS[:1], return_tensors="pt", padding=True)
    assert torch.equal(_greedy(qaic, enc), _greedy(hf, enc))
    enc = tok(PROMPTS + ["one two three four five six seven eight nine ten"], return_tensors="pt", padding=True)
    assert torch.equal(_greedy(qaic, enc), _greedy(hf, enc))


@pytest.mark.slow
def test_eos_stops_like_transformers(pair):
    tok, hf, qaic = pair
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    free = _greedy(hf, enc)
    eos = int(free[0, enc["input_ids"].shape[1] + 3])  # a token the first row emits at step 3
    out = _greedy(qaic, enc, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, _greedy(hf, enc, eos_token_id=eos, pad_token_id=tok.pad_token_id))
    n = enc["input_ids"].shape[1]
    first = free[0, n:].tolist().index(eos)  # row 0 stops at its first eos, then only pads
    assert int(out[0, n + first]) == eos and (out[0, n + first + 1 :] == tok.pad_token_id).all()


@pytest.mark.slow
def test_sampling_gives_valid_tokens(pair):
    tok, hf, qaic = pair
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = qaic.generate(**enc, max_new_tokens=10, do_sample=True, top_k=5, temperature=0.8)
    assert out.shape == (2, enc["input_ids"].shape[1] + 10)
    assert int(out.max()) < hf.config.vocab_size
    torch.manual_seed(0)
    ref = hf.generate(**enc, max_new_tokens=10, do_sample=True, top_k=5, temperature=0.8)
    assert torch.equal(out, ref)  # same logits to round-off, same random stream


@pytest.mark.slow
def test_num_return_sequences_with_sampling_on_a_batch_one_export(single):
    tok, hf, qaic, _ = single
    enc = tok(PROMPTS[0], return_tensors="pt")
    torch.manual_seed(1)
    out = qaic.generate(**enc, max_new_tokens=12, do_sample=True, num_return_sequences=3)
    torch.manual_seed(1)
    ref = hf.generate(**enc, max_new_tokens=12, do_sample=True, num_return_sequences=3)
    assert out.shape == (3, enc["input_ids"].shape[1] + 12)
    assert torch.equal(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_batch_one_short_and_long_prompts(tiny_dirs, tmp_path, arch):
    model_dir = tiny_dirs[arch]
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    qaic = QAICModelForCausalLM.from_pretrained(
        model_dir,
        export=True,
        prefill_seq_len=8,
        ctx_len=64,
        num_cores=3,
        moe_prefill_packed_chunk_size=3,
        output=str(tmp_path / "export"),
    )
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        assert torch.equal(_greedy(qaic, enc), _greedy(hf, enc))

    qaic.save_pretrained(str(tmp_path / "saved"))
    reloaded = QAICModelForCausalLM.from_pretrained(str(tmp_path / "saved"))
    enc = tok(PROMPTS[0], return_tensors="pt")
    assert torch.equal(_greedy(reloaded, enc), _greedy(hf, enc))
    assert reloaded.settings.num_cores == 3


# -- forward ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_forward_starts_afresh_on_every_call(single):
    """model(**inputs) outside generate is a new prompt each time: the last-position logits equal transformers',
    whatever ran before (an earlier call, or a generation)."""
    tok, hf, qaic, _ = single
    for prompt in PROMPTS + [PROMPTS[0]]:
        enc = tok(prompt, return_tensors="pt")
        got = qaic(**enc).logits
        assert got.shape == (1, 1, hf.config.vocab_size)
        with torch.no_grad():
            ref = hf(**enc).logits[:, -1:]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    _greedy(qaic, tok(PROMPTS[1], return_tensors="pt"))
    enc = tok(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(qaic(**enc).logits, hf(**enc).logits[:, -1:], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_forward_refuses_to_score_a_whole_sequence(single):
    tok, _, qaic, _ = single
    enc = tok(PROMPTS[0], return_tensors="pt")
    with pytest.raises(UserError, match="last token only .* scoring a whole sequence"):
        qaic(**enc, labels=enc["input_ids"])
    with pytest.raises(UserError, match="last token only"):
        qaic(**enc, logits_to_keep=0)


@pytest.mark.slow
def test_generation_input_errors(single):
    tok, hf, qaic, _ = single
    vocab = hf.config.vocab_size
    with pytest.raises(UserError, match=r"empty prompt: input_ids has shape \(1, 0\)"):
        qaic.generate(input_ids=torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(UserError, match=r"empty prompt"):
        qaic.generate(**tok("", return_tensors="pt"), max_new_tokens=2)
    for bad in (-1, vocab):
        ids = torch.tensor([[5, bad, 6]])
        with pytest.raises(UserError, match=rf"token id {bad} is outside the vocabulary \[0, {vocab}\)"):
            qaic.generate(input_ids=ids, max_new_tokens=2)
        with pytest.raises(UserError, match=rf"token id {bad} is outside"):
            qaic(input_ids=ids)
        with pytest.raises(IndexError):  # what transformers does with the same ids
            hf(input_ids=ids)


@pytest.mark.slow
def test_beam_search_and_overlong_generation_are_refused_before_any_work(single):
    tok, _, qaic, _ = single
    enc = tok(PROMPTS[1], return_tensors="pt")
    _greedy(qaic, enc)
    state = qaic.runner.cache  # a prompt would replace it
    with pytest.raises(UserError, match=r"beam search \(num_beams=2\) is not supported.*do_sample=True"):
        qaic.generate(**enc, num_beams=2, max_new_tokens=4)
    n = enc["input_ids"].shape[1]
    with pytest.raises(
        UserError,
        match=rf"a prompt of {n} tokens plus 70 new tokens needs {n + 69} cache positions, "
        rf"but this export has ctx_len=64: export again with ctx_len={n + 69} or "
        rf"more \(--ctx-len\), or set max_new_tokens={65 - n}",
    ):
        qaic.generate(**enc, max_new_tokens=70)
    assert qaic.runner.cache is state
    out = qaic.generate(**enc, max_new_tokens=65 - n, do_sample=False)  # exactly what fits
    assert out.shape[1] == 65


@pytest.mark.slow
def test_context_overflow_of_a_decode_only_export(tiny_dirs):
    qaic = QAICModelForCausalLM.from_pretrained(
        tiny_dirs["qwen3_moe"], export=True, decode_only=True, ctx_len=8, prefill_seq_len=4, num_cores=2, verify=False
    )
    tok = AutoTokenizer.from_pretrained(tiny_dirs["qwen3_moe"])
    with pytest.raises(UserError, match="export again with ctx_len=15 or more"):
        qaic.generate(**tok("the cat is on the red", return_tensors="pt"), max_new_tokens=10, do_sample=False)


# -- pipeline, streamer, dtype --------------------------------------------------------------------------------------


class _Records(list):
    def __init__(self):
        super().__init__()
        import logging

        self.handler = logging.Handler()
        self.handler.emit = self.append


class _TokenStreamer(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.chunks.append("end")


@pytest.mark.slow
def test_pipeline_and_streamer(single):
    tok, hf, qaic, _ = single
    records = _Records()
    root = hf_logging.get_logger("transformers")  # where transformers' pipelines log
    root.addHandler(records.handler)
    try:
        pipe = pipeline("text-generation", model=qaic, tokenizer=tok)
    finally:
        root.removeHandler(records.handler)
    assert not [r for r in records if "not supported" in r.getMessage()]
    enc = tok(PROMPTS[0], return_tensors="pt")
    result = pipe(PROMPTS[0], max_new_tokens=20, do_sample=False, return_tensors=True)[0]
    assert result["generated_token_ids"] == _greedy(hf, enc)[0].tolist()

    streamer = _TokenStreamer()
    out = qaic.generate(**enc, max_new_tokens=6, do_sample=False, streamer=streamer)
    assert streamer.chunks[0] == enc["input_ids"][0].tolist() and streamer.chunks[-1] == "end"
    assert [t for chunk in streamer.chunks[1:-1] for t in chunk] == out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.mark.slow
def test_dtype_device_and_loading_keywords(single):
    _, _, qaic, out = single
    assert qaic.dtype == torch.float32 and qaic.device == torch.device("cpu")
    with pytest.raises(TypeError, match="num_cores .*export options need export=True"):
        QAICModelForCausalLM.from_pretrained(out, num_cores=4)
    with pytest.raises(TypeError, match="unexpected keyword argument.*colour"):
        QAICModelForCausalLM.from_pretrained(out, colour="red")
    with pytest.raises(TypeError, match="num_corse"):
        QAICModelForCausalLM.from_pretrained(out, export=True, num_corse=4)
    QAICModelForCausalLM.from_pretrained(out, revision=None, local_files_only=True, subfolder="")


def test_errors(tiny_dirs, tmp_path):
    with pytest.raises(UserError, match="not a QAIC export"):
        QAICModelForCausalLM.from_pretrained(tiny_dirs["qwen3_moe"])
    with pytest.raises(UserError, match="model directory not found"):
        QAICModelForCausalLM.from_pretrained(str(tmp_path / "missing"), export=True)
    with pytest.raises(UserError, match="^num_cores must be a positive integer, got 0$"):
        QAICModelForCausalLM.from_pretrained(tiny_dirs["qwen3_moe"], export=True, num_cores=0)


@pytest.mark.slow
def test_qaic_device_without_sdk_is_a_clear_error(exports):
    out, _ = exports["qwen3_moe"]
    with pytest.raises(UserError, match="qaicrt"):
        QAICModelForCausalLM.from_pretrained(out, device="qaic")


# -- save and push ------------------------------------------------------------------------------------------------


def _files(root):
    return {
        os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
        for d, _, names in os.walk(root)
        for f in names
    }


@pytest.mark.slow
def test_save_pretrained_takes_transformers_keywords(single, tmp_path):
    tok, hf, qaic, out = single
    qaic.save_pretrained(str(tmp_path / "saved"), safe_serialization=True, max_shard_size="5GB", variant=None)
    assert _files(tmp_path / "saved") == _files(out)
    enc = tok(PROMPTS[1], return_tensors="pt")
    assert torch.equal(_greedy(QAICModelForCausalLM.from_pretrained(str(tmp_path / "saved")), enc), _greedy(hf, enc))
    with pytest.raises(TypeError, match="save_pretrained.*compression"):
        qaic.save_pretrained(str(tmp_path / "other"), compression="zip")


@pytest.mark.slow
def test_push_to_hub_uploads_the_export(exports):
    """Against a local stand-in of the Hub's upload API (the Hub is unreachable here): the real huggingface_hub
    client, in a fresh process pointed at it by HF_ENDPOINT, commits every file of the export, byte for byte."""
    out, _ = exports["qwen3_moe"]
    code = (
        "from optimum_qaic_moe import QAICModelForCausalLM\n"
        "import sys, tempfile\n"
        f"model = QAICModelForCausalLM.from_pretrained({out!r})\n"
        "model.push_to_hub('org/tiny-qaic', token='hf_test', commit_message='first', safe_serialization=True)\n"
        "model.save_pretrained(tempfile.mkdtemp(), push_to_hub=True, repo_id='org/again', token='hf_test')\n"
    )
    with UploadStandIn() as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1")
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False
        )
        assert proc.returncode == 0, proc.stderr
    assert hub.repos == ["org/tiny-qaic", "org/again"]
    first, again = hub.commits
    assert (first["repo"], first["revision"], first["summary"]) == ("org/tiny-qaic", "main", "first")
    assert first["files"] == _files(out) == again["files"]
    assert {"qaic_config.json", "prefill.onnx", "weights.data", "decode/custom_io.yaml", "tokenizer.json"} <= set(
        first["files"]
    )


# -- an export directory is not trusted ---------------------------------------------------------------------------


CASES = {
    "not json": (lambda m, d: "{", r"qaic_config.json is not valid JSON"),
    "a list": (lambda m, d: json.dumps([m]), r"qaic_config.json holds a JSON list"),
    "no settings": (
        lambda m, d: json.dumps({k: v for k, v in m.items() if k != "settings"}),
        r"qaic_config.json: settings must be an object, got '<missing>'",
    ),
    "graph outside": (
        lambda m, d: json.dumps({**m, "graphs": ["prefill", "../x"]}),
        r"qaic_config.json: graphs entry '../x' is not a graph of a QAIC export",
    ),
    "graph twice": (
        lambda m, d: json.dumps({**m, "graphs": ["decode", "decode"]}),
        r"graphs must be a non-empty list of distinct graph names",
    ),
    "ctx_lens past the RoPE tables": (
        lambda m, d: json.dumps({**m, "ctx_lens": [32, 10**7]}),
        r"ctx_lens goes up to 10000000 but .*prefill.onnx holds RoPE tables for \d+ ",
    ),
    "ctx_lens text": (
        lambda m, d: json.dumps({**m, "ctx_lens": ["64"]}),
        r"ctx_lens must be a non-empty list of positive integers, got \['64'\]",
    ),
    "window zero": (
        lambda m, d: json.dumps({**m, "sliding_window": 0}),
        r"sliding_window must be null or a positive integer, got 0",
    ),
    "batch raised": (
        lambda m, d: json.dumps({**m, "settings": {**m["settings"], "batch_size": 2}}),
        r"settings.batch_size is 2 but .*prefill.onnx was exported with 1",
    ),
    "prefill length": (
        lambda m, d: json.dumps({**m, "settings": {**m["settings"], "prefill_seq_len": 16}}),
        r"settings.prefill_seq_len is 16 but .*prefill.onnx was exported with 8",
    ),
    "ctx_len text": (
        lambda m, d: json.dumps({**m, "settings": {**m["settings"], "ctx_len": "64"}}),
        r"qaic_config.json: settings.ctx_len must be an integer or a list, got '64'",
    ),
    "dispatch": (
        lambda m, d: json.dumps({**m, "settings": {**m["settings"], "moe_prefill_dispatch": 3}}),
        r"settings.moe_prefill_dispatch must be one of 'blocked', 'grouped', 'loop', got 3",
    ),
    "pad id": (lambda m, d: json.dumps({**m, "pad_token_id": -3}), r"pad_token_id must be null or a token id >= 0"),
    "graph missing": (
        lambda m, d: os.remove(os.path.join(d, "decode.onnx")) or json.dumps(m),
        r"lists the decode graph but .*decode.onnx does not exist",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_export_is_refused_with_one_clear_error(exports, tmp_path, case):
    edit, message = CASES[case]
    out = tmp_path / "export"
    shutil.copytree(exports["qwen3_moe"][0], out)
    meta = json.loads((out / "qaic_config.json").read_text())
    (out / "qaic_config.json").write_text(edit(meta, str(out)))
    with pytest.raises(UserError, match=message) as info:
        QAICModelForCausalLM.from_pretrained(str(out))
    assert "\n" not in str(info.value)
