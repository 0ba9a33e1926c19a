"""The `optimum-cli export qaic` command surface: discovery, help, and one clear line for bad input."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import optimum_cli

OPTIONS = [
    "--model",
    "--task",
    "--batch-size",
    "--prefill-seq-len",
    "--ctx-len",
    "--num-cores",
    "--moe-prefill-packed-chunk-size",
    "--moe-prefill-dispatch",
    "--prefill-only",
    "--decode-only",
    "--enable-chunking",
    "--mxfp6-matmul",
    "--mxint8-kv-cache",
    "--mos",
    "--aic-enable-depth-first",
    "--num-devices",
    "--aic-hw-version",
    "--compile",
    "--compiler",
    "--opset",
    "--no-verify",
    "--trust-remote-code",
    "--cache-dir",
    "--revision",
    "--token",
    "--subfolder",
    "--local-files-only",
    "--compile-backend",
]
GROUPS = ["Model:", "Shapes:", "MoE dispatch:", "Compile:", "ONNX:", "Verification:"]
README = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "README.md")


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


def test_help_is_grouped_one_line_per_option_with_description_and_example():
    proc = optimum_cli("export", "qaic", "--help", env={"COLUMNS": "120"})
    out = proc.stdout
    assert out.startswith("usage: optimum-cli export qaic --model MODEL [options] OUTPUT")
    assert (
        "Export a Mixture-of-Experts checkpoint (Qwen3-MoE, GPT-OSS, Mixtral, Qwen2-MoE) to Qualcomm Cloud AI 100"
        in out
    )
    assert "examples:\n  optimum-cli export qaic --model Qwen/Qwen3-30B-A3B" in out
    positions = [out.index("\n" + title + "\n") for title in GROUPS]
    assert positions == sorted(positions)  # the sections, in this order
    for option in OPTIONS:
        line = next(line for line in out.splitlines() if line.strip().startswith(option))
        assert len(line.split(None, 1)) == 2 and len(line.strip()) > len(option) + 10, line  # flag and help
    assert re.search(r"--num-cores N +NSPs .*\(default: 16\)$", out, re.MULTILINE)
    flat = " ".join(out.split())  # argparse wraps long help lines at the terminal's width
    assert re.search(r"--moe-prefill-dispatch NAME .*?one of blocked, grouped, loop; default: blocked", flat)


def test_readme_option_table_is_generated_from_the_settings():
    from optimum_qaic_moe.settings import options_table

    with open(README) as f:
        text = f.read()
    table = text.split("<!-- options:start -->\n", 1)[1].split("<!-- options:end -->", 1)[0].strip()
    assert table == options_table(), "README option table is stale: paste the output of options_table()"


def test_cli_registration_imports_no_heavy_module():
    # What optimum-cli imports for every command: our register file and the command module.
    code = (
        "import sys, optimum.commands.register.register_qaic, optimum_qaic_moe.plugins, "
        "optimum_qaic_moe.settings; "
        "print(sorted(m for m in ('torch', 'onnx', 'transformers', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_runs_without_heavy_imports(tmp_path):
    """The real `optimum-cli export qaic --help` code path, in-process, then the list of what it imported. Run
    outside the source tree: `python -c` puts the working directory on sys.path, and this tree's own
    optimum/commands/register beside the installed one would register `qaic` twice."""
    code = (
        "import sys\nfrom optimum.commands.optimum_cli import main\n"
        "sys.argv = ['optimum-cli', 'export', 'qaic', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'onnx', 'transformers', 'onnxruntime') if m in sys.modules), "
        "file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "--num-cores" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "[]"


def _assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--num-cores", "0"], ["--num-cores", "positive"]),
        (["--num-cores", "-3"], ["--num-cores", "positive"]),
        (["--moe-prefill-packed-chunk-size", "0"], ["--moe-prefill-packed-chunk-size", "positive"]),
        (["--prefill-only", "--decode-only"], ["--prefill-only", "--decode-only"]),
        (["--prefill-seq-len", "128", "--ctx-len", "64"], ["--prefill-seq-len", "--ctx-len"]),
        (["--prefill-seq-len", "16", "--ctx-len", "64,8"], ["--prefill-seq-len 16", "--ctx-len 8"]),
        (
            ["--prefill-seq-len", "100000", "--ctx-len", "100000"],
            ["attention scores per prefill call", "16 GiB", "lower --prefill-seq-len"],
        ),
        (
            [
                "--prefill-seq-len",
                "4096",
                "--ctx-len",
                "8192",
                "--moe-prefill-packed-chunk-size",
                "1",
                "--num-cores",
                "1",
            ],
            ["would unroll", "--moe-prefill-packed-chunk-size", "grouped"],
        ),
        (["--task", "fill-mask"], ["--task", "fill-mask", "text-generation-with-past"]),
        (["--num-cores", "four"], ["--num-cores", "invalid int value: 'four'"]),
        (["--num-corse", "4"], ["unrecognized arguments: --num-corse", "did you mean --num-cores?"]),
        (["--moe-prefill-dispatch", "sorted"], ["--moe-prefill-dispatch", "blocked", "loop"]),
        (["--compile-backend", "nope"], ["--compile-backend nope is not registered", "qaic-compile"]),
        (["--opset", "12"], ["--opset 12", "between 14 and 23"]),
    ],
)
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


def test_missing_model_option(tmp_path):
    proc = optimum_cli("export", "qaic", tmp_path / "out")
    _assert_one_line_error(proc, "the following arguments are required: --model")


def _broken_config(tiny_dirs, tmp_path, edit):
    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["qwen3_moe"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(edit(config))
    return model


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda c: '{"model_type": "qwen3_moe",', ["config.json is not valid JSON", "line 1 column"]),
        (lambda c: json.dumps([c]), ["config.json holds a JSON list, not an object"]),
        (lambda c: json.dumps({**c, "model_type": 5}), ["model_type must be a string", "got 5"]),
        (lambda c: json.dumps({**c, "model_type": ["qwen3_moe"]}), ["model_type must be a string"]),
        (lambda c: json.dumps({**c, "num_experts_per_tok": 9}), ["num_experts_per_tok is 9", "6 experts"]),
        (lambda c: json.dumps({**c, "hidden_size": -32}), ["hidden_size must be a positive integer, got -32"]),
        (lambda c: json.dumps({**c, "num_hidden_layers": 0}), ["num_hidden_layers must be a positive integer"]),
        (lambda c: json.dumps({**c, "sliding_window": -1}), ["sliding_window must be a positive integer, got -1"]),
        (lambda c: json.dumps({**c, "num_key_value_heads": 3}), ["not a multiple of num_key_value_heads 3"]),
    ],
)
def test_damaged_config_is_one_line(tmp_path, tiny_dirs, edit, needles):
    model = _broken_config(tiny_dirs, tmp_path, edit)
    out = tmp_path / "out"
    proc = optimum_cli("export", "qaic", "--model", model, out)
    _assert_one_line_error(proc, str(model / "config.json"), *needles)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_dangling_symlink_and_file_as_model(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    proc = optimum_cli("export", "qaic", "--model", tmp_path / "link", tmp_path / "out")
    _assert_one_line_error(proc, "is a broken symbolic link", str(tmp_path / "gone"))
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    proc = optimum_cli("export", "qaic", "--model", tmp_path / "weights.safetensors", tmp_path / "out")
    _assert_one_line_error(proc, "is a file: give the directory")
    assert not (tmp_path / "out").exists()


def test_environment_error_is_one_line(tmp_path, tiny_dirs):
    """An output nobody can create (/proc refuses new directories, even to root) is the environment's fault:
    one line naming the path, no traceback."""
    proc = optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], "--no-verify", "/proc/qaic-export")
    _assert_one_line_error(proc, "/proc/qaic-export")


def test_python_api_errors_name_parameters_and_cli_errors_name_flags(tiny_dirs, tmp_path):
    from optimum_qaic_moe import UserError, main_export

    with pytest.raises(UserError, match=r"^num_cores must be a positive integer, got 0$"):
        main_export(tiny_dirs["qwen3_moe"], str(tmp_path / "out"), num_cores=0)
    with pytest.raises(UserError, match=r"^prefill_seq_len 128 is longer than ctx_len 64: raise ctx_len"):
        main_export(tiny_dirs["qwen3_moe"], str(tmp_path / "out"), ctx_len=64)
    with pytest.raises(UserError, match=r"^moe_prefill_dispatch must be one of 'blocked', 'grouped', 'loop', got 'x'$"):
        main_export(tiny_dirs["qwen3_moe"], str(tmp_path / "out"), moe_prefill_dispatch="x")
    with pytest.raises(TypeError, match=r"num_corse \(did you mean num_cores\?\)"):
        main_export(tiny_dirs["qwen3_moe"], str(tmp_path / "out"), num_corse=4)
    proc = optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], "--ctx-len", 64, tmp_path / "out")
    _assert_one_line_error(proc, "--prefill-seq-len 128 is longer than --ctx-len 64: raise --ctx-len")
    assert not (tmp_path / "out").exists()


def test_python_export_api_is_documented_and_in_all():
    import inspect

    import optimum_qaic_moe
    from optimum_qaic_moe import main_export

    assert "main_export" in optimum_qaic_moe.__all__
    params = inspect.signature(main_export).parameters
    assert list(params)[:2] == ["model_name_or_path", "output"]
    assert params["num_cores"].default == 16 and params["moe_prefill_dispatch"].default == "blocked"
    assert "``num_cores`` (16): NSPs the experts are dealt over" in main_export.__doc__


def test_the_package_imports_under_python_OO():
    """python -OO strips docstrings: main_export's generated option list must not assume one."""
    code = "import inspect, optimum_qaic_moe; print(list(inspect.signature(optimum_qaic_moe.main_export).parameters))"
    proc = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "'model_name_or_path', 'output', " in proc.stdout and "'num_cores'" in proc.stdout


def test_unsupported_model_type(tmp_path):
    model = tmp_path / "llama"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    out = tmp_path / "out"
    proc = optimum_cli("export", "qaic", "--model", model, out)
    _assert_one_line_error(proc, "unsupported model_type 'llama'", "gpt_oss", "qwen3_moe")
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")]


@pytest.mark.skipif(
    importlib.util.find_spec("optimum.exporters.onnx") is None,
    reason="optimum-onnx is not installed (CI installs it on the transformers 4.57 line)",
)
def test_onnx_export_keeps_working_beside_qaic(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2")
    listing = optimum_cli("export", "--help").stdout
    assert "qaic" in listing and "onnx" in listing
    proc = optimum_cli("export", "onnx", "--model", tmp_path / "gpt2", "--task", "text-generation", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_cli_value_parsing_of_the_option_types():
    """The types an option may have (see the settings module's docstring), parsed as the CLI parses them."""
    from typing import Literal

    from optimum_qaic_moe.settings import parse_text

    chunk = int | Literal["auto"]
    assert parse_text("7", chunk) == 7 and parse_text("auto", chunk) == "auto"
    with pytest.raises(ValueError, match="expected an integer or one of 'auto', got 'big'"):
        parse_text("big", chunk)
    assert parse_text("loop", Literal["blocked", "loop"]) == "loop"
    assert parse_text("3", int | None) == 3 and parse_text("x", str) == "x"
