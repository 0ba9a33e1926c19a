"""Whole models with the grouped MoE prefill: `optimum-cli export qaic --moe-prefill-dispatch grouped` passes its
built-in verification, and QAICModelForCausalLM.generate (chunked prefill, then decode) equals transformers
token for token, with the tile size picked by `auto` and with a tile size that divides nothing."""

import re

import pytest
import torch
from conftest import ARCHS, optimum_cli, read_json
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_qaic_moe import QAICModelForCausalLM
from optimum_qaic_moe.settings import UserError

PROMPTS = ["the cat is on the red house and the dog is in the old car by the river", "a sun"]
PREFILL = 8  # the long prompt runs as 3 prefill chunks


@pytest.fixture(scope="module", params=ARCHS)
def grouped_export(request, tiny_dirs, tmp_path_factory):
    """CLI export, batch 2, tile size auto, verification on."""
    out = tmp_path_factory.mktemp("grouped") / request.param
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs[request.param],
        "--batch-size",
        2,
        "--prefill-seq-len",
        PREFILL,
        "--ctx-len",
        64,
        "--num-cores",
        4,
        "--moe-prefill-dispatch",
        "grouped",
        "--moe-prefill-packed-chunk-size",
        "auto",
        out,
        check=True,
    )
    return request.param, out, proc


def greedy(model, enc):
    return model.generate(**enc, max_new_tokens=16, do_sample=False)


@pytest.mark.slow
def test_cli_export_verifies_and_says_what_it_chose(grouped_export):
    _, out, proc = grouped_export
    verified = re.search(r"\[qaic\] verify: .* = ([0-9.e+-]+) of the logits' scale", proc.stderr)
    assert verified and float(verified.group(1)) <= 1e-5, proc.stderr
    # 2 x 8 tokens, top-2 of 6 experts: the cost model loads each expert once (one tile of 16 rows each).
    assert (
        "grouped MoE prefill: chunk size auto = 16 (cost model); 16 tokens x top-2 = 32 routed rows in 6 tiles"
        in proc.stderr
    )
    settings = read_json(out / "qaic_config.json")["settings"]
    assert settings["moe_prefill_dispatch"] == "grouped" and settings["moe_prefill_packed_chunk_size"] == "auto"


@pytest.mark.slow
def test_generate_left_padded_batch_matches_transformers(grouped_export, tiny_dirs):
    arch, out, _ = grouped_export
    tok = AutoTokenizer.from_pretrained(tiny_dirs[arch], padding_side="left")
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=torch.float32).eval()
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert enc["input_ids"].shape[1] > 2 * PREFILL
    assert torch.equal(greedy(QAICModelForCausalLM.from_pretrained(str(out)), enc), greedy(hf, enc))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_python_export_with_tiles_of_3_matches_transformers(arch, tiny_dirs, tmp_path):
    """Tiles of 3 rows for 8 tokens x top-2: several tiles per expert, the last ones partly empty."""
    model_dir = tiny_dirs[arch]
    qaic = QAICModelForCausalLM.from_pretrained(
        model_dir,
        export=True,
        prefill_seq_len=PREFILL,
        ctx_len=64,
        moe_prefill_dispatch="grouped",
        moe_prefill_packed_chunk_size=3,
        output=str(tmp_path / "export"),
    )
    assert qaic.settings.moe_prefill_dispatch == "grouped"
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        assert torch.equal(greedy(qaic, enc), greedy(hf, enc))


@pytest.mark.parametrize("value", ["0", "banana", "-4"])
def test_bad_chunk_size_is_one_line(tmp_path, tiny_dirs, value):
    out = tmp_path / "out"
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs["qwen3_moe"],
        "--moe-prefill-dispatch",
        "grouped",
        "--moe-prefill-packed-chunk-size",
        value,
        out,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    shown = value if value.lstrip("-").isdigit() else repr(value)
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--moe-prefill-packed-chunk-size" in line and f"got {shown}" in line
    assert "positive integer" in line or "'auto'" in line
    assert not out.exists()


def test_bad_chunk_size_in_python(tiny_dirs):
    with pytest.raises(UserError, match="moe_prefill_packed_chunk_size must be an integer or one of 'auto'"):
        QAICModelForCausalLM.from_pretrained(tiny_dirs["qwen3_moe"], export=True, moe_prefill_packed_chunk_size="big")
