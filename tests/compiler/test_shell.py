"""What the export prints for a shell, and compile.sh, under hostile output names: pasting the hint runs
compile.sh of that export and nothing else. Real bash runs them; the compiler is the stand-in executable
(tests/standins/qaic_compile.py, as the QAIC SDK cannot be installed here), which records where it ran."""

import json
import shutil
import subprocess

import pytest
from conftest import optimum_cli
from standins import install_tool

from optimum_qaic_moe import compiler
from optimum_qaic_moe.settings import ExportSettings

HOSTILE = [
    "$(touch pwned)",
    "a;b",
    "`touch pwned`",
    "with space",
    'it\'s "quoted"',
    "ends in newline\n",
    "tab\there",
    "back\\slash",
    "-dash",
    "x\n$(touch pwned)",
]
HINT = "to compile later run: "


def hint_command(lines):
    (line,) = [line for line in lines if HINT in line]
    return line.split(HINT, 1)[1]


def run_pasted(command, cwd):
    """What a user does: paste the command into bash."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_hint_and_compile_sh_under_hostile_output_names(tmp_path, exports, monkeypatch, name):
    sandbox = tmp_path / "sandbox"
    out = sandbox / name
    shutil.copytree(exports["qwen3_moe"][0], out)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    monkeypatch.setenv("OPTIMUM_QAIC_MOE_CACHE", str(tmp_path / "cache"))
    settings = ExportSettings(model="m", output=str(out), compile="never", compiler=install_tool(tmp_path / "bin"))
    lines = []
    compiler.compile_export(str(out), settings, compiler.resolve_backend(settings), say=lines.append)
    command = hint_command(lines)
    assert "\n" not in command  # one line, whatever the name holds

    proc = run_pasted(command, cwd=sandbox)
    assert proc.returncode == 0, proc.stderr
    with open(log) as f:
        assert [json.loads(line)["cwd"] for line in f] == [str(out)] * 2  # compile.sh ran in the export
    assert (out / "decode" / "qpc" / "programqpc.bin").exists()
    assert not list(tmp_path.rglob("pwned"))


@pytest.mark.slow
def test_cli_hint_is_quoted(tmp_path, tiny_dirs):
    name = "x $(touch pwned);`touch pwned` 'q\"\n"
    out = tmp_path / name
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs["gpt_oss"],
        "--prefill-seq-len",
        4,
        "--ctx-len",
        16,
        "--num-cores",
        2,
        "--no-verify",
        "--decode-only",
        "--compile",
        "never",
        "--compiler",
        install_tool(tmp_path / "bin"),
        out,
        env={"OPTIMUM_QAIC_MOE_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    command = hint_command(proc.stderr.splitlines())
    assert command == "bash $'" + str(tmp_path) + "/x $(touch pwned);`touch pwned` \\'q\"\\x0a/compile.sh'"
    pasted = run_pasted(command, cwd=tmp_path)
    assert pasted.returncode == 0, pasted.stderr
    assert (out / "decode" / "qpc" / "programqpc.bin").exists()
    assert not list(tmp_path.rglob("pwned"))
