"""Publishing an export never loses a user's files or a good export (issue: reliability, data loss).

The end-to-end cases run the real CLI; the kill and interleaving cases drive `publish` directly on synthetic
exports (the same files, without the minutes of a model export), in real subprocesses killed with SIGKILL."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import optimum_cli

from optimum_qaic_moe.exporters import publish
from optimum_qaic_moe.settings import UserError

SMALL = ("--prefill-seq-len", 4, "--ctx-len", 16, "--num-cores", 2, "--no-verify", "--compile", "never")


def tree(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def error_line(proc, only=True):
    """The `error: ...` line that ends a failed run (the only line, when the input is refused up front)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("error: ") and (len(lines) == 1 or not only), proc.stderr
    return lines[-1]


@pytest.fixture
def project(tmp_path):
    """A user's project folder: files with the names an export writes, and others."""
    root = tmp_path / "project"
    for rel, text in {
        "config.json": '{"mine": 1}',
        "tokenizer.json": "my tokenizer",
        "compile.sh": "echo mine",
        "generation_config.json": "{}",
        "prefill/notes.txt": "notes",
        "decode/data.csv": "1,2",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_non_empty_foreign_output_is_refused_untouched(tiny_dirs, project):
    before = tree(project)
    proc = optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *SMALL, project)
    line = error_line(proc)
    assert "not empty" in line and "--overwrite" in line
    assert tree(project) == before
    assert sorted(os.listdir(project.parent)) == ["project"]  # no staging left


@pytest.mark.slow
def test_overwrite_keeps_files_of_other_names_and_reexport_keeps_them(tiny_dirs, project):
    proc = optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *SMALL, "--overwrite", project)
    assert proc.returncode == 0, proc.stderr
    files = tree(project)
    assert files["prefill/notes.txt"] == b"notes" and files["decode/data.csv"] == b"1,2"
    assert b"mine" not in files["config.json"]  # consented: ours replaced the file of the same name
    meta = json.loads(files["qaic_config.json"])
    assert "prefill/notes.txt" not in meta["files"] and "prefill.onnx" in meta["files"]

    (project / "prefill" / "more.txt").write_text("added after the export")
    proc = optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *SMALL, "--prefill-only", project)
    assert proc.returncode == 0, proc.stderr  # an earlier export of ours: replaced without --overwrite
    files = tree(project)
    assert files["prefill/notes.txt"] == b"notes" and files["prefill/more.txt"] == b"added after the export"
    assert files["decode/data.csv"] == b"1,2"
    assert "decode.onnx" not in files and "decode/specializations.json" not in files  # no decode graph: old one gone
    assert json.loads(files["qaic_config.json"])["graphs"] == ["prefill"]


def test_dangling_symlink_output_is_one_line(tiny_dirs, tmp_path):
    os.symlink(tmp_path / "missing", tmp_path / "out")
    line = error_line(optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *SMALL, tmp_path / "out"))
    assert "symlink" in line and "does not exist" in line


# -- publish itself, on synthetic exports ---------------------------------------------------------------------


def fake_export(root, version, files=("prefill/model.onnx", "decode/model.onnx", "config.json")):
    root.mkdir(parents=True, exist_ok=True)
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{version}:{rel}")
    meta = {"settings": {}, "version": version, "files": sorted(list(files) + [publish.CONFIG_NAME])}
    (root / publish.CONFIG_NAME).write_text(json.dumps(meta))
    return root


def staged(output, version, **kw):
    """A synthetic export of `version` in a real staging directory for `output`."""
    target = publish.prepare(str(output), overwrite=False)
    fake_export(pathlib.Path(target.staging), version, **kw)
    return target


def consistent_version(root):
    """The one version every file of ours under root carries; fails on a mix."""
    files = tree(root)
    meta = json.loads(files.pop(publish.CONFIG_NAME))
    versions = {v.decode().split(":")[0] for k, v in files.items() if k in meta["files"]}
    assert versions == {meta["version"]}, files
    assert set(meta["files"]) - {publish.CONFIG_NAME} <= set(files)
    return meta["version"]


def test_publish_replaces_an_export_and_keeps_user_files(tmp_path):
    out = fake_export(tmp_path / "out", "old")
    (out / "prefill" / "notes.txt").write_text("user")
    target = staged(out, "new")
    publish.publish(target)
    assert consistent_version(out) == "new"
    assert (out / "prefill" / "notes.txt").read_text() == "user"
    assert sorted(os.listdir(tmp_path)) == ["out"]


KILLER = textwrap.dedent("""
    import json, os, pathlib, sys, time
    from optimum_qaic_moe.exporters import publish
    target = publish.prepare(sys.argv[1], overwrite=False)
    files = [f"prefill/w{i}.bin" for i in range(200)] + ["config.json"]
    for rel in files:
        path = pathlib.Path(target.staging, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"new:{rel}")
    meta = {"settings": {}, "version": "new", "files": sorted(files + [publish.CONFIG_NAME])}
    pathlib.Path(target.staging, publish.CONFIG_NAME).write_text(json.dumps(meta))
    print("ready", flush=True)
    sys.stdin.readline()
    publish.publish(target)
    time.sleep(60)
""")


@pytest.mark.parametrize("delay_ms", [0, 1, 2, 5, 20])
def test_a_kill_at_any_moment_leaves_the_old_or_the_new_export(tmp_path, delay_ms):
    out = fake_export(tmp_path / "out", "old", files=tuple(f"prefill/w{i}.bin" for i in range(200)) + ("config.json",))
    (out / "prefill" / "user.txt").write_text("user")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if delay_ms:
        time.sleep(delay_ms / 1000)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert consistent_version(out) in ("old", "new")
    # The next export cleans the dead process's staging and gives back any user file it had moved.
    publish.publish(staged(out, "next", files=("config.json",)))
    assert consistent_version(out) == "next"
    assert (out / "prefill" / "user.txt").read_text() == "user"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_staging_of_a_dead_export_is_removed_and_never_loads(tmp_path, exports):
    from optimum_qaic_moe import QAICModelForCausalLM

    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f"out.partial-{dead.pid}"
    shutil.copytree(exports["qwen3_moe"][0], leftover)
    (leftover / publish.PARTIAL_MARKER).write_text("")
    with pytest.raises(UserError, match="staging directory of an unfinished export"):
        QAICModelForCausalLM.from_pretrained(str(leftover))
    publish.discard(publish.prepare(str(tmp_path / "out"), overwrite=False))
    assert not leftover.exists()


# -- other filesystems: need root to mount a tmpfs ------------------------------------------------------------


@pytest.fixture
def mount(tmp_path):
    mounted = []

    def do(path, *options):
        path.mkdir(parents=True, exist_ok=True)
        args = ["mount", "-t", "tmpfs"] + (["-o", ",".join(options)] if options else []) + ["tmpfs", str(path)]
        if os.geteuid() != 0 or subprocess.run(args, capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root (CI runs as root)")
        mounted.append(path)
        return path

    yield do
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_output_that_is_a_mount_point(tiny_dirs, tmp_path, mount):
    out = mount(tmp_path / "mnt", "size=64m")
    for extra in ((), ("--prefill-only",)):
        proc = optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *SMALL, *extra, out)
        assert proc.returncode == 0, proc.stderr
    files = tree(out)
    assert "tokenizer.json" in files and "prefill.onnx" in files and "decode.onnx" not in files
    assert sorted(os.listdir(out)) == sorted({p.split(os.sep)[0] for p in files})  # no staging left inside


@pytest.mark.slow
def test_disk_full_and_read_only_are_one_line(tiny_dirs, tmp_path, mount):
    full = mount(tmp_path / "full", "size=256k")
    line = error_line(
        optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *SMALL, full / "out"), only=False
    )
    assert "No space left on device" in line
    assert os.listdir(full) == []
    # a disk too small for the weights themselves: weights.data is allocated before anything is written through
    # its memory map, so this is an error line naming what it needed, not a SIGBUS that kills the process and
    # leaves a staging directory behind
    tiny = mount(tmp_path / "tiny", "size=64k")
    line = error_line(
        optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *SMALL, tiny / "out"), only=False
    )
    assert "No space left on device: weights.data needs" in line
    assert os.listdir(tiny) == []
    ro = mount(tmp_path / "ro", "ro")
    line = error_line(optimum_cli("export", "qaic", "--model", tiny_dirs["qwen3_moe"], *SMALL, ro / "out"))
    assert "Read-only file system" in line
