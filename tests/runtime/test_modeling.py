"""QAICModelForCausalLM.generate on the onnxruntime reference runtime equals transformers token for token."""


import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ARCHS
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
    qaic = QAICModelForCausalLM.from_pretrained(model_dir, export=True, batch_size=2, prefill_seq_len=8, ctx_len=64,
                                                num_cores=4, moe_prefill_packed_chunk_size=5, verify=False)
    return tok, hf, qaic


def _greedy(model, enc, **kwargs):
    return model.generate(**enc, max_new_tokens=20, do_sample=False, **kwargs)


def test_left_padded_batch_matches_transformers(pair):
    tok, hf, qaic = pair
    enc = tok(PROMPTS, return_tensors="pt", padding=True)  # one prompt longer than prefill, one shorter
    assert enc["input_ids"].shape[1] > 8 and int(enc["attention_mask"][1].sum()) < 8
    assert torch.equal(_greedy(qaic, enc), _greedy(hf, enc))


def test_eos_stops_like_transformers(pair):
    tok, hf, qaic = pair
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    free = _greedy(hf, enc)
    eos = int(free[0, enc["input_ids"].shape[1] + 3])  # a token the first row emits at step 3
    out = _greedy(qaic, enc, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, _greedy(hf, enc, eos_token_id=eos, pad_token_id=tok.pad_token_id))
    n = enc["input_ids"].shape[1]
    first = free[0, n:].tolist().index(eos)  # row 0 stops at its first eos, then only pads
    assert int(out[0, n + first]) == eos and (out[0, n + first + 1:] == tok.pad_token_id).all()


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


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_one_short_and_long_prompts(tiny_dirs, tmp_path, arch):
    model_dir = tiny_dirs[arch]
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    qaic = QAICModelForCausalLM.from_pretrained(model_dir, export=True, prefill_seq_len=8, ctx_len=64, num_cores=3,
                                                moe_prefill_packed_chunk_size=3, output=str(tmp_path / "export"))
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        assert torch.equal(_greedy(qaic, enc), _greedy(hf, enc))

    qaic.save_pretrained(str(tmp_path / "saved"))
    reloaded = QAICModelForCausalLM.from_pretrained(str(tmp_path / "saved"))
    enc = tok(PROMPTS[0], return_tensors="pt")
    assert torch.equal(_greedy(reloaded, enc), _greedy(hf, enc))
    assert reloaded.settings.num_cores == 3


def test_errors(tiny_dirs, tmp_path):
    with pytest.raises(UserError, match="not a QAIC export"):
        QAICModelForCausalLM.from_pretrained(tiny_dirs["qwen3_moe"])
    with pytest.raises(UserError, match="model directory not found"):
        QAICModelForCausalLM.from_pretrained(str(tmp_path / "missing"), export=True)
    with pytest.raises(TypeError, match="num_corse"):
        QAICModelForCausalLM.from_pretrained(tiny_dirs["qwen3_moe"], export=True, num_corse=4)


def test_context_overflow_is_a_clear_error(tiny_dirs, tmp_path):
    qaic = QAICModelForCausalLM.from_pretrained(tiny_dirs["qwen3_moe"], export=True, decode_only=True, ctx_len=8,
                                                prefill_seq_len=4, num_cores=2, verify=False)
    tok = AutoTokenizer.from_pretrained(tiny_dirs["qwen3_moe"])
    with pytest.raises(UserError, match="does not fit the context of 8 tokens"):
        qaic.generate(**tok("the cat is on the red", return_tensors="pt"), max_new_tokens=10, do_sample=False)


def test_qaic_device_without_sdk_is_a_clear_error(exports):
    out, _ = exports["qwen3_moe"]
    with pytest.raises(UserError, match="qaicrt"):
        QAICModelForCausalLM.from_pretrained(out, device="qaic")
