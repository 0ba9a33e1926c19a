"""The compile step. The QAIC compiler (qaic-compile, from the proprietary platform SDK) cannot be installed on
this machine, so these tests use a stand-in executable: it records its argv and writes programqpc.bin where
-aic-binary-dir points, as the real one does. Everything around it is real: the CLI, the exact command, the
files the compiler reads, the cache, compile.sh."""

import json
import os
import stat
import subprocess

import pytest

from conftest import optimum_cli

STAND_IN = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["STANDIN_LOG"]
with open(log, "a") as f:
    f.write(json.dumps({"argv": sys.argv, "cwd": os.getcwd()}) + "\\n")
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
for key in ("-m", "-network-specialization-config", "-custom-IO-list-file"):
    assert os.path.isfile(args[key]), args[key]
if os.environ.get("STANDIN_FAIL"):
    print("error: unsupported operator CtxFrobnicate in graph", file=sys.stderr)
    sys.exit(3)
out = args["-aic-binary-dir"]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "programqpc.bin"), "wb").write(b"stand-in qpc")
"""


def make_stand_in(tmp_path, name="qaic-compile"):
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(STAND_IN)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def calls(log):
    return [json.loads(line) for line in open(log)] if os.path.exists(log) else []


@pytest.fixture
def env(tmp_path):
    return {"STANDIN_LOG": str(tmp_path / "calls.jsonl"), "OPTIMUM_QAIC_MOE_CACHE": str(tmp_path / "cache")}


def export(tiny_dirs, out, *extra, env=None):
    return optimum_cli("export", "qaic", "--model", tiny_dirs["gpt_oss"], "--prefill-seq-len", 4, "--ctx-len", 16,
                       "--num-cores", 3, "--moe-prefill-packed-chunk-size", 3, "--no-verify", *extra, out, env=env)


def test_compile_always_runs_the_exact_command_once_per_graph(tmp_path, tiny_dirs, env):
    compiler = make_stand_in(tmp_path)
    out = tmp_path / "out"
    proc = export(tiny_dirs, out, "--compile", "always", "--compiler", compiler, "--mxfp6-matmul", "--mos", 2,
                  "--aic-enable-depth-first", env=env)
    assert proc.returncode == 0, proc.stderr
    recorded = calls(env["STANDIN_LOG"])
    assert [c["argv"][1:] for c in recorded][0][:-1] == [
        "-aic-hw", "-aic-hw-version=ai100", "-m=prefill.onnx", "-retained-state", "-convert-to-fp16",
        "-aic-num-cores=3", "-mxfp6-matmul", "-mos=2", "-aic-enable-depth-first",
        "-network-specialization-config=prefill/specializations.json",
        "-custom-IO-list-file=prefill/custom_io.yaml"]
    assert recorded[0]["argv"][-1].startswith("-aic-binary-dir=")  # compiled in the cache, then copied
    assert recorded[0]["cwd"] == str(out)
    assert [c["argv"][3] for c in recorded] == ["-m=prefill.onnx", "-m=decode.onnx"]
    for graph in ("prefill", "decode"):
        assert (out / graph / "qpc" / "programqpc.bin").read_bytes() == b"stand-in qpc"
    script = (out / "compile.sh").read_text()
    assert f"{compiler} -aic-hw -aic-hw-version=ai100 -m=prefill.onnx" in script
    assert "-aic-binary-dir=prefill/qpc" in script

    # An identical second export compiles nothing: the cache answers.
    proc = export(tiny_dirs, tmp_path / "again", "--compile", "always", "--compiler", compiler, "--mxfp6-matmul",
                  "--mos", 2, "--aic-enable-depth-first", env=env)
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
    proc = export(tiny_dirs, tmp_path / "out", "--compile", "always", "--compiler", compiler, "--prefill-only",
                  env=dict(env, STANDIN_FAIL="1"))
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
    proc = export(tiny_dirs, tmp_path / "out", "--compile", "never", "--decode-only",
                  env=dict(env, PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin"))
    assert proc.returncode == 0, proc.stderr
    assert calls(env["STANDIN_LOG"]) == []
    assert "not compiled (--compile never)" in proc.stderr
