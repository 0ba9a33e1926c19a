"""Output follows transformers' verbosity: the CLI shows its stage lines (and progress bars on a terminal) unless
TRANSFORMERS_VERBOSITY says otherwise; in Python, transformers.logging.set_verbosity_* governs it."""

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios

import pytest
from conftest import BIN, optimum_cli
from transformers.utils import logging as hf_logging

FAST = ("--prefill-seq-len", 4, "--ctx-len", 16, "--num-cores", 2, "--decode-only", "--no-verify")


def _run_on_terminal(args, env):
    """Run optimum-cli with stderr on a pseudo-terminal (tqdm draws bars only on a terminal); return its output."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 rows, 120 columns
    proc = subprocess.Popen(
        [os.path.join(BIN, "optimum-cli"), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=child,
        env=dict(os.environ, **env),
    )
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 600)
        try:
            data = os.read(main, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            data = b""
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_cli_verbosity_error_prints_nothing(tmp_path, tiny_dirs):
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs["qwen3_moe"],
        *FAST,
        tmp_path / "out",
        env={"TRANSFORMERS_VERBOSITY": "error"},
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert (tmp_path / "out" / "decode.onnx").is_file()


@pytest.mark.slow
def test_cli_progress_bars_on_a_terminal_follow_the_verbosity(tmp_path, tiny_dirs):
    shown = _run_on_terminal(["export", "qaic", "--model", tiny_dirs["qwen3_moe"], *FAST, tmp_path / "a"], {})
    assert "[qaic] trace the decode graph" in shown
    assert "decode: " in shown and "/2 [" in shown  # the tqdm bar: the top-level graph, then one layer per kind
    silent = _run_on_terminal(
        ["export", "qaic", "--model", tiny_dirs["qwen3_moe"], *FAST, tmp_path / "b"],
        {"TRANSFORMERS_VERBOSITY": "error"},
    )
    assert silent.strip() == ""


@pytest.mark.slow
def test_python_follows_transformers_verbosity(tmp_path, tiny_dirs, capfd):
    from optimum_qaic_moe import main_export

    before = hf_logging.get_verbosity()
    options = {"prefill_seq_len": 4, "ctx_len": 16, "num_cores": 2, "decode_only": True, "verify": False}
    try:
        hf_logging.set_verbosity_error()
        main_export(tiny_dirs["qwen3_moe"], str(tmp_path / "quiet"), **options)
        assert "[qaic]" not in capfd.readouterr().err
        hf_logging.set_verbosity_info()
        main_export(tiny_dirs["qwen3_moe"], str(tmp_path / "loud"), **options)
        err = capfd.readouterr().err
        assert "[qaic] trace the decode graph (seq_len 1, MoE gathered) ..." in err
        assert f"[qaic] wrote {tmp_path / 'loud'}" in err
    finally:
        hf_logging.set_verbosity(before)
