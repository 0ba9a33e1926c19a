"""Hub model ids, resolved offline from a Hugging Face cache laid out exactly as a download leaves it, by the real
huggingface_hub (HF_HUB_OFFLINE=1 or local_files_only): no mock, and no network."""

import os

import pytest
import torch
from conftest import optimum_cli, read_json
from hub_standins import checkpoint_files, write_hub_cache
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_qaic_moe import QAICModelForCausalLM, UserError

REPO = "org/tiny-moe"
MAIN = "1" * 40  # refs/main: a Qwen3-MoE at the top level
V2 = "2" * 40  # refs/v2: a GPT-OSS in the subfolder gpt/
SHAPES = ("--prefill-seq-len", 4, "--ctx-len", 32, "--num-cores", 3, "--moe-prefill-packed-chunk-size", 3)


@pytest.fixture(scope="module")
def hub_cache(tiny_dirs, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("hf-cache"))
    write_hub_cache(cache, REPO, checkpoint_files(tiny_dirs["qwen3_moe"]), MAIN, refs=("main",))
    write_hub_cache(cache, REPO, checkpoint_files(tiny_dirs["gpt_oss"], prefix="gpt/"), V2, refs=("v2",))
    return cache


def _offline(cache):
    return {"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}


def _one_line_error(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_cli_exports_a_hub_id_from_the_cache(hub_cache, tmp_path):
    out = tmp_path / "out"
    proc = optimum_cli("export", "qaic", "--model", REPO, *SHAPES, out, env=_offline(hub_cache))
    assert proc.returncode == 0, proc.stderr
    meta = read_json(out / "qaic_config.json")
    assert meta["model_type"] == "qwen3_moe"
    assert meta["source_model"].endswith(os.path.join("models--org--tiny-moe", "snapshots", MAIN))
    assert meta["settings"]["model"] == REPO
    assert "[qaic] verify:" in proc.stderr  # the graphs match transformers on the cached weights
    assert (out / "tokenizer.json").is_file()  # snapshot files are links into blobs/: inside the cache, copied


@pytest.mark.slow
@pytest.mark.parametrize("revision", ["v2", V2])
def test_cli_revision_branch_or_commit_and_subfolder(hub_cache, tmp_path, revision):
    out = tmp_path / "out"
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        REPO,
        "--revision",
        revision,
        "--subfolder",
        "gpt",
        *SHAPES,
        "--decode-only",
        "--no-verify",
        out,
        env=_offline(hub_cache),
    )
    assert proc.returncode == 0, proc.stderr
    meta = read_json(out / "qaic_config.json")
    assert meta["model_type"] == "gpt_oss"
    assert meta["source_model"].endswith(os.path.join("snapshots", V2, "gpt"))
    assert meta["settings"]["revision"] == revision and "token" not in meta["settings"]


def test_cli_hub_errors_are_one_line(hub_cache, tmp_path):
    env = _offline(hub_cache)
    proc = optimum_cli("export", "qaic", "--model", "org/missing", tmp_path / "out", env=env)
    _one_line_error(
        proc,
        "org/missing is not a local directory and not in the Hugging Face cache",
        hub_cache,
        "HF_HUB_OFFLINE is set",
        "hf download org/missing",
    )
    proc = optimum_cli("export", "qaic", "--model", REPO, "--revision", "v3", tmp_path / "out", env=env)
    _one_line_error(proc, "org/tiny-moe (revision v3) is not a local directory and not in the Hugging Face cache")
    proc = optimum_cli("export", "qaic", "--model", REPO, "--revision", "v2", tmp_path / "out", env=env)
    _one_line_error(proc, "no config.json in", os.path.join("snapshots", V2))
    proc = optimum_cli("export", "qaic", "--model", REPO, "--subfolder", "nope", tmp_path / "out", env=env)
    _one_line_error(proc, "no subfolder 'nope' in org/tiny-moe")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_python_export_of_a_hub_id_matches_transformers_on_the_same_cache(hub_cache, tmp_path):
    """cache_dir and local_files_only as transformers takes them; transformers itself resolves the same id from the
    same cache for the reference."""
    options = {"cache_dir": hub_cache, "local_files_only": True}
    qaic = QAICModelForCausalLM.from_pretrained(
        REPO,
        export=True,
        prefill_seq_len=4,
        ctx_len=32,
        num_cores=3,
        moe_prefill_packed_chunk_size=3,
        verify=False,
        **options,
    )
    hf = AutoModelForCausalLM.from_pretrained(REPO, dtype=torch.float32, **options).eval()
    tok = AutoTokenizer.from_pretrained(REPO, **options)
    enc = tok("the cat is on the red house and", return_tensors="pt")
    assert torch.equal(
        qaic.generate(**enc, max_new_tokens=12, do_sample=False), hf.generate(**enc, max_new_tokens=12, do_sample=False)
    )
    with pytest.raises(UserError, match="org/missing is not a local directory .* local_files_only is set"):
        QAICModelForCausalLM.from_pretrained("org/missing", export=True, **options)


@pytest.mark.slow
def test_an_export_on_the_hub_loads_by_id(exports, tmp_path):
    """What push_to_hub uploads, as a download leaves it in the cache, loads with from_pretrained(repo id)."""
    out, _ = exports["qwen3_moe"]
    files = {
        os.path.relpath(os.path.join(d, f), out): os.path.join(d, f) for d, _, names in os.walk(out) for f in names
    }
    cache = str(tmp_path / "cache")
    write_hub_cache(cache, "org/tiny-qaic", files, MAIN, refs=("main",))
    qaic = QAICModelForCausalLM.from_pretrained("org/tiny-qaic", cache_dir=cache, local_files_only=True)
    reference = QAICModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[5, 9, 17, 30]])
    torch.testing.assert_close(qaic(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    assert read_json(os.path.join(qaic.export_dir, "qaic_config.json")) == read_json(
        os.path.join(out, "qaic_config.json")
    )
