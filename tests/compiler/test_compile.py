"""The compile step through `optimum-cli`. The QAIC compiler (qaic-compile, from the proprietary platform SDK)
cannot be installed on this machine, so these tests use a stand-in executable (tests/standins/qaic_compile.py):
it records its argv, prints progress lines and writes programqpc.bin where -aic-binary-dir points, as the real
one does. Everything around it is real: the CLI, the exact command, the files the compiler reads, the cache,
compile.sh."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, optimum_cli
from standins import install_tool

pytestmark = pytest.mark.slow  # every test here starts optimum-cli, most export: 10 to 60 s each


def make_stand_in(tmp_path, name="qaic-compile"):
    return Path(install_tool(tmp_path / "bin", name))


def calls(log):
    return [json.loads(line) for line in open(log)] if os.path.exists(log) else []


@pytest.fixture
def env(tmp_path):
    return {"STANDIN_LOG": str(tmp_path / "calls.jsonl"), "OPTIMUM_QAIC_MOE_CACHE": str(tmp_path / "cache")}


def export(tiny_dirs, out, *extra, env=None):
    return optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs["gpt_oss"],
        "--prefill-seq-len",
        4,
        "--ctx-len",
        16,
        "--num-cores",
        3,
        "--moe-prefill-packed-chunk-size",
        3,
        "--no-verify",
        *extra,
        out,
        env=env,
    )


def test_compile_always_runs_the_exact_command_once_per_graph(tmp_path, tiny_dirs, env):
    compiler = make_stand_in(tmp_path)
    out = tmp_path / "out"
    precision = tmp_path / "precision.yaml"
    precision.write_text("FP32NodeInstanceNames:\n  - /norm/Mul\n")
    options = (
        "--compiler-option=-sub-functions",
        f"--compiler-option=-node-precision-info={precision}",
        "--compiler-option=-user-tiled",
    )
    proc = export(
        tiny_dirs,
        out,
        "--compile",
        "always",
        "--compiler",
        compiler,
        "--mxfp6-matmul",
        "--mos",
        2,
        "--aic-enable-depth-first",
        *options,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    recorded = calls(env["STANDIN_LOG"])
    assert recorded[0]["argv"][1:-1] == [
        "-aic-hw",
        "-aic-hw-version=ai100",
        "-m=prefill.onnx",
        "-retained-state",
        "-convert-to-fp16",
        "-aic-num-cores=3",
        "-mxfp6-matmul",
        "-mos=2",
        "-aic-enable-depth-first",
        "-sub-functions",
        f"-node-precision-info={precision}",
        "-user-tiled",
        "-network-specialization-config=prefill/specializations.json",
        "-custom-IO-list-file=prefill/custom_io.yaml",
    ]
    assert recorded[0]["argv"][-1].startswith("-aic-binary-dir=")  # compiled in the cache, then copied
    assert recorded[0]["cwd"] == str(out)
    assert [c["argv"][3] for c in recorded] == ["-m=prefill.onnx", "-m=decode.onnx"]
    for graph in ("prefill", "decode"):
        assert (out / graph / "qpc" / "programqpc.bin").read_bytes() == b"stand-in qpc"
    script = (out / "compile.sh").read_text()
    assert f"{compiler} -aic-hw -aic-hw-version=ai100 -m=prefill.onnx" in script
    assert "-aic-binary-dir=prefill/qpc" in script

    # The compiler's own output is passed on, line by line, tagged with the graph.
    assert "[qaic]   prefill: stand-in qaic-compile: reading prefill.onnx (1 specialization(s))" in proc.stderr

    # An identical second export compiles nothing: the cache answers.
    proc = export(
        tiny_dirs,
        tmp_path / "again",
        "--compile",
        "always",
        "--compiler",
        compiler,
        "--mxfp6-matmul",
        "--mos",
        2,
        "--aic-enable-depth-first",
        *options,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(calls(env["STANDIN_LOG"])) == 2
    assert "cached" in proc.stderr
    assert (tmp_path / "again" / "decode" / "qpc" / "programqpc.bin").exists()


def test_compile_always_without_compiler_fails_before_exporting(tmp_path, tiny_dirs, env):
    out = tmp_path / "out"
    proc = export(tiny_dirs, out, "--compile", "always", env=dict(env, PATH="/usr/bin:/bin"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --compile always, but no compiler was found")
    assert not out.exists()


def test_auto_without_compiler_writes_compile_sh(tmp_path, tiny_dirs, env):
    out = tmp_path / "out"
    proc = export(tiny_dirs, out, "--num-devices", 2, env=dict(env, PATH="/usr/bin:/bin"))
    assert proc.returncode == 0, proc.stderr
    assert f"not compiled (no QAIC compiler found); to compile later run: bash {out}/compile.sh" in proc.stderr
    script = (out / "compile.sh").read_text()
    assert "/opt/qti-aic/exec/qaic-compile -aic-hw" in script
    assert "-mdp-load-partition-config=decode/mdp_partition.json" in script
    partition = json.loads((out / "decode" / "mdp_partition.json").read_text())
    assert [d["deviceId"] for d in partition["partitions"][0]["devices"]] == [0, 1]
    subprocess.run(["bash", "-n", str(out / "compile.sh")], check=True)  # valid shell


def test_compiler_failure_carries_its_stderr(tmp_path, tiny_dirs, env):
    compiler = make_stand_in(tmp_path)
    proc = export(
        tiny_dirs,
        tmp_path / "out",
        "--compile",
        "always",
        "--compiler",
        compiler,
        "--prefill-only",
        env=dict(env, STANDIN_FAIL="1"),
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "qaic-compile failed for the prefill graph (exit 3)" in last
    assert "unsupported operator CtxFrobnicate" in last
    assert not (tmp_path / "out" / "prefill" / "qpc").exists()


def test_legacy_qaic_exec_gets_compile_only(tmp_path, tiny_dirs, env):
    compiler = make_stand_in(tmp_path, "qaic-exec")
    proc = export(tiny_dirs, tmp_path / "out", "--decode-only", env=dict(env, PATH=f"{compiler.parent}:/usr/bin:/bin"))
    assert proc.returncode == 0, proc.stderr
    argv = calls(env["STANDIN_LOG"])[0]["argv"]
    assert argv[0] == str(compiler) and argv[1] == "-compile-only"


def test_compile_never_skips_the_compiler(tmp_path, tiny_dirs, env):
    make_stand_in(tmp_path)
    proc = export(
        tiny_dirs,
        tmp_path / "out",
        "--compile",
        "never",
        "--decode-only",
        env=dict(env, PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin"),
    )
    assert proc.returncode == 0, proc.stderr
    assert calls(env["STANDIN_LOG"]) == []
    assert "not compiled (--compile never)" in proc.stderr


def _run_until(proc, text, seen):
    """Read the CLI's stderr line by line until ``text`` appears (the compiler is then still running)."""
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return
    raise AssertionError("".join(seen))


def test_compiler_output_streams_while_it_runs(tmp_path, tiny_dirs, env):
    """The stand-in prints a line, then blocks until we answer: we can only answer if the line reached us
    while the compiler was still running."""
    go = tmp_path / "go"
    argv = [
        os.path.join(BIN, "optimum-cli"),
        "export",
        "qaic",
        "--model",
        tiny_dirs["gpt_oss"],
        "--prefill-seq-len",
        "4",
        "--ctx-len",
        "16",
        "--num-cores",
        "2",
        "--no-verify",
        "--decode-only",
        "--compile",
        "always",
        "--compiler",
        str(make_stand_in(tmp_path)),
        str(tmp_path / "out"),
    ]
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **env, STANDIN_WAIT_FOR=str(go))
    )
    seen = []
    _run_until(proc, "decode: stand-in qaic-compile: waiting", seen)
    go.touch()
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, "".join(seen) + rest
    assert (tmp_path / "out" / "decode" / "qpc" / "programqpc.bin").exists()


def test_interrupt_during_compile_keeps_the_export_and_leaves_no_work_dir(tmp_path, tiny_dirs, env):
    argv = [
        os.path.join(BIN, "optimum-cli"),
        "export",
        "qaic",
        "--model",
        tiny_dirs["gpt_oss"],
        "--prefill-seq-len",
        "4",
        "--ctx-len",
        "16",
        "--num-cores",
        "2",
        "--no-verify",
        "--compile",
        "always",
        "--compiler",
        str(make_stand_in(tmp_path)),
        str(tmp_path / "out"),
    ]
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **env, STANDIN_WAIT_FOR=str(tmp_path / "never"))
    )
    seen = []
    _run_until(proc, "prefill: stand-in qaic-compile: waiting", seen)
    proc.send_signal(signal.SIGINT)  # to the CLI only, as `kill -INT` would
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    last = rest.strip().splitlines()[-1]
    out = tmp_path / "out"
    assert last == (
        f"error: interrupted while compiling; the export in {out} is complete, but graphs without a "
        f"qpc/ are not compiled: run bash {out}/compile.sh"
    )
    assert "Traceback" not in rest and "no artifacts were left" not in rest
    assert (out / "qaic_config.json").exists() and (out / "prefill.onnx").exists()
    assert sorted(p.name for p in (out / "prefill").iterdir()) == ["custom_io.yaml", "specializations.json"]
    assert os.listdir(env["OPTIMUM_QAIC_MOE_CACHE"]) == []  # the compiler's work dir is gone
    compiler_pid = calls(env["STANDIN_LOG"])[0]["pid"]
    with pytest.raises(ProcessLookupError):  # and the compiler itself was stopped
        os.kill(compiler_pid, 0)
