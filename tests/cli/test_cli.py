"""The `optimum-cli export qaic` command surface: discovery, help, and one clear line for bad input."""

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import optimum_cli

OPTIONS = ["--model", "--task", "--batch-size", "--prefill-seq-len", "--ctx-len", "--num-cores",
           "--moe-prefill-packed-chunk-size", "--moe-prefill-dispatch", "--prefill-only", "--decode-only",
           "--enable-chunking", "--mxfp6-matmul", "--mxint8-kv-cache", "--mos", "--aic-enable-depth-first",
           "--num-devices", "--aic-hw-version", "--compile", "--compiler", "--opset", "--no-verify"]


def test_export_help_lists_qaic():
    proc = optimum_cli("export", "--help")
    assert proc.returncode == 0
    assert "qaic" in proc.stdout


def test_qaic_help_lists_every_option():
    proc = optimum_cli("export", "qaic", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in OPTIONS:
        assert option in proc.stdout, option
    assert "output" in proc.stdout


def test_cli_registration_imports_no_heavy_module():
    # What optimum-cli imports for every command: our register file and the command module.
    code = ("import sys, optimum.commands.register.register_qaic, optimum_qaic_moe.plugins, "
            "optimum_qaic_moe.settings; "
            "print(sorted(m for m in ('torch', 'onnx', 'transformers', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--num-cores", "0"], ["--num-cores", "positive"]),
    (["--num-cores", "-3"], ["--num-cores", "positive"]),
    (["--moe-prefill-packed-chunk-size", "0"], ["--moe-prefill-packed-chunk-size", "positive"]),
    (["--prefill-only", "--decode-only"], ["--prefill-only", "--decode-only"]),
    (["--prefill-seq-len", "128", "--ctx-len", "64"], ["--prefill-seq-len", "--ctx-len"]),
    (["--task", "fill-mask"], ["unknown task", "text-generation-with-past"]),
])
def test_bad_options_fail_with_one_line(tmp_path, tiny_dirs, args, needles):
    out = tmp_path / "out"
    proc = optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *args, out)
    _assert_one_line_error(proc, *needles)
    assert not out.exists()


def test_missing_model_dir(tmp_path):
    out = tmp_path / "out"
    proc = optimum_cli("export", "qaic", "--model", tmp_path / "nope", out)
    _assert_one_line_error(proc, "model directory not found", str(tmp_path / "nope"))
    assert not out.exists()


def test_unsupported_model_type(tmp_path):
    model = tmp_path / "llama"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    out = tmp_path / "out"
    proc = optimum_cli("export", "qaic", "--model", model, out)
    _assert_one_line_error(proc, "unsupported model_type 'llama'", "gpt_oss", "qwen3_moe")
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")]


@pytest.mark.skipif(importlib.util.find_spec("optimum.exporters.onnx") is None,
                    reason="optimum-onnx is not installed (CI installs it on the transformers 4.57 line)")
def test_onnx_export_keeps_working_beside_qaic(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2")
    listing = optimum_cli("export", "--help").stdout
    assert "qaic" in listing and "onnx" in listing
    proc = optimum_cli("export", "onnx", "--model", tmp_path / "gpt2", "--task", "text-generation", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.onnx").is_file()
