"""The compile step in-process over a copy of one real export: what the compile cache trusts, its key, hardware
detection, compiler options with files. The QAIC compiler and ``qaic-util`` are proprietary and cannot be
installed here: stand-in executables (tests/standins/) take their place and record how they were called.
Tests that need another user's files (chown) need root and skip without it."""

import json
import os
import shutil
import stat

import pytest
from conftest import read_json
from standins import install_tool

from optimum_qaic_moe import compiler
from optimum_qaic_moe.compiler.qaic import QAICCompileBackend
from optimum_qaic_moe.settings import ExportSettings, UserError

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root (chown)")
NOBODY = 65534


@pytest.fixture
def setup(tmp_path, exports, monkeypatch):
    """(a fresh copy of the gpt_oss export, the stand-in compiler, the cache root, the call log)."""
    out = tmp_path / "out"
    shutil.copytree(exports["gpt_oss"][0], out)
    cache, log = tmp_path / "cache", tmp_path / "calls.jsonl"
    monkeypatch.setenv("OPTIMUM_QAIC_MOE_CACHE", str(cache))
    monkeypatch.setenv("STANDIN_LOG", str(log))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no qaic-util unless a test puts one there
    return out, install_tool(tmp_path / "bin"), cache, log


def settings_of(out, compiler_path, **changes):
    settings = ExportSettings.from_dict(read_json(os.path.join(out, "qaic_config.json"))["settings"])
    settings.compile, settings.compiler = "always", str(compiler_path)
    for name, value in changes.items():
        setattr(settings, name, value)
    return settings


def compile_export(out, compiler_path, **changes):
    """Our compile step on one export; returns the lines it said."""
    settings = settings_of(out, compiler_path, **changes)
    lines = []
    compiler.compile_export(str(out), settings, compiler.resolve_backend(settings), say=lines.append)
    return lines


def calls(log):
    return [json.loads(line) for line in open(log)] if os.path.exists(log) else []


def compiled_calls(log):
    return [c for c in calls(log) if os.path.basename(c["argv"][0]) == "qaic-compile"]


def entry_of(out, compiler_path, cache, graph="prefill"):
    """The cache entry our compile step uses for one graph of ``out``."""
    settings = settings_of(out, compiler_path)
    backend = QAICCompileBackend()
    argv = dict(backend.commands(str(out), settings, str(compiler_path)))[graph]
    return cache / backend.cache_key(str(out), argv)


def again(out, tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("qpc"))
    return copy


def test_relative_cache_root_is_resolved_where_the_user_is(setup, tmp_path, monkeypatch):
    out, cc, _, _ = setup
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("OPTIMUM_QAIC_MOE_CACHE", "rel-cache")
    compile_export(out, cc)
    assert len(os.listdir(tmp_path / "work" / "rel-cache")) == 2  # one entry per graph, no work dirs
    assert not (out / "rel-cache").exists()
    assert (out / "decode" / "qpc" / "programqpc.bin").read_bytes() == b"stand-in qpc"


def test_cache_key_follows_the_compilers_contents_not_its_mtime(setup, tmp_path):
    out, cc, _, log = setup
    compile_export(out, cc)
    assert len(compiled_calls(log)) == 2
    st = os.stat(cc)
    os.utime(cc, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))  # touched, same compiler
    lines = compile_export(again(out, tmp_path, "touched"), cc)
    assert len(compiled_calls(log)) == 2 and sum("cached" in line for line in lines) == 2
    with open(cc, "a") as f:
        f.write("# another compiler build\n")
    os.utime(cc, ns=(st.st_atime_ns, st.st_mtime_ns))  # a different compiler with the old timestamp
    compile_export(again(out, tmp_path, "rebuilt"), cc)
    assert len(compiled_calls(log)) == 4


def test_cache_key_frames_each_file_by_name_and_length(tmp_path):
    """Files whose concatenation is the same must not share a key (spec "ab" + io "c" vs spec "a" + io "bc")."""
    keys = []
    for spec, io in (("ab", "c"), ("a", "bc")):
        d = tmp_path / spec
        d.mkdir()
        (d / "s.json").write_text(spec)
        (d / "io.yaml").write_text(io)
        argv = ["/nonexistent/qaic-compile", "-network-specialization-config=s.json", "-custom-IO-list-file=io.yaml"]
        keys.append(QAICCompileBackend().cache_key(str(d), argv))
    assert keys[0] != keys[1]


def test_a_planted_entry_in_a_world_writable_cache_is_not_used(setup, tmp_path, monkeypatch):
    out, cc, _, log = setup
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("OPTIMUM_QAIC_MOE_CACHE", str(shared))
    planted = entry_of(out, cc, shared)
    planted.mkdir(mode=0o700)
    (planted / "programqpc.bin").write_bytes(b"planted")
    lines = compile_export(out, cc)
    assert (out / "prefill" / "qpc" / "programqpc.bin").read_bytes() == b"stand-in qpc"
    assert len(compiled_calls(log)) == 2
    assert (
        f"[qaic] warning: not using the compile cache: {shared} is writable or readable by other users "
        "(mode 777) (make it a private directory of yours, e.g. chmod 700, or set $OPTIMUM_QAIC_MOE_CACHE to "
        "one)" in lines
    )
    assert os.listdir(shared) == [planted.name]  # nothing written there either


def test_a_symlink_in_a_cache_entry_is_refused(setup, tmp_path):
    out, cc, cache, log = setup
    compile_export(out, cc)
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only")
    secret.chmod(0o600)
    entry = entry_of(out, cc, cache)
    os.symlink(secret, entry / "weights.bin")
    target = again(out, tmp_path, "second")
    lines = compile_export(target, cc)
    assert f"[qaic] compile prefill: not using the cache entry: {entry}/weights.bin is a symlink" in lines
    assert sorted(os.listdir(target / "prefill" / "qpc")) == ["programqpc.bin", "standin"]
    assert len(compiled_calls(log)) == 3  # prefill compiled again; decode's entry was fine
    assert not os.path.islink(entry / "weights.bin") and not (entry / "weights.bin").exists()


def test_cache_entries_are_private_and_exports_are_not(setup):
    out, cc, cache, _ = setup
    compile_export(out, cc)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    entry = entry_of(out, cc, cache)
    for top, _dirs, files in os.walk(entry):
        assert stat.S_IMODE(os.stat(top).st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(top, name)).st_mode) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out / "prefill" / "qpc" / "programqpc.bin").st_mode) == 0o666 & ~umask


@NEEDS_ROOT
def test_an_entry_of_another_user_is_refused(setup, tmp_path):
    out, cc, cache, _ = setup
    compile_export(out, cc)
    entry = entry_of(out, cc, cache)
    for top, _dirs, files in os.walk(entry):
        for path in [top] + [os.path.join(top, f) for f in files]:
            os.chown(path, NOBODY, NOBODY)
    lines = compile_export(again(out, tmp_path, "second"), cc)
    assert (
        f"[qaic] compile prefill: not using the cache entry: {entry} belongs to uid {NOBODY}, not to you "
        f"(uid {os.geteuid()})" in lines
    )
    assert os.stat(entry).st_uid == os.geteuid()  # recompiled and replaced


@NEEDS_ROOT
def test_a_cache_root_of_another_user_is_not_used(setup, tmp_path, monkeypatch):
    out, cc, _, log = setup
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    monkeypatch.setenv("OPTIMUM_QAIC_MOE_CACHE", str(theirs))
    lines = compile_export(out, cc)
    assert any(
        line.startswith(f"[qaic] warning: not using the compile cache: {theirs} belongs to uid {NOBODY}")
        for line in lines
    )
    assert os.listdir(theirs) == [] and len(compiled_calls(log)) == 2


def test_hardware_version_is_asked_from_qaic_util(setup, tmp_path, monkeypatch):
    out, cc, _, log = setup
    install_tool(tmp_path / "bin", "qaic-util")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("STANDIN_HW_VARIANT", "AIC200")
    compile_export(out, cc)
    assert [c["argv"][2] for c in compiled_calls(log)] == ["-aic-hw-version=ai200"] * 2
    assert [c["argv"][1:] for c in calls(log) if c["argv"][0].endswith("qaic-util")] == [["-q"]]
    assert "-aic-hw-version=ai200" in (out / "compile.sh").read_text()

    os.remove(log)
    compile_export(again(out, tmp_path, "explicit"), cc, aic_hw_version="ai100")  # an explicit choice wins
    assert [c["argv"][2] for c in calls(log)] == ["-aic-hw-version=ai100"] * 2  # and qaic-util is not asked

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no qaic-util: ai100 (the explicit run's cache answers)
    target = again(out, tmp_path, "no-util")
    assert sum("cached" in line for line in compile_export(target, cc)) == 2
    assert (target / "compile.sh").read_text().count("-aic-hw-version=ai100") == 2


def test_compiler_option_files_are_absolute_and_part_of_the_key(setup, tmp_path, monkeypatch):
    out, cc, _, log = setup
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    precision = tmp_path / "work" / "precision.yaml"
    precision.write_text("FP32NodeInstanceNames:\n  - /norm/Mul\n")
    options = ["-node-precision-info=precision.yaml", "-sub-functions"]
    compile_export(out, cc, compiler_options=options)
    recorded = compiled_calls(log)
    assert all(f"-node-precision-info={precision}" in c["argv"] and "-sub-functions" in c["argv"] for c in recorded)
    assert f"-node-precision-info={precision}" in (out / "compile.sh").read_text()
    compile_export(again(out, tmp_path, "same"), cc, compiler_options=options)
    assert len(compiled_calls(log)) == 2  # cached
    precision.write_text("FP32NodeInstanceNames:\n  - /norm/Add\n")
    compile_export(again(out, tmp_path, "edited"), cc, compiler_options=options)
    assert len(compiled_calls(log)) == 4  # the file changed: compiled again


def test_bad_compiler_options_fail_before_any_export_work(tmp_path, tiny_dirs):
    from optimum_qaic_moe.exporters.main import run_export

    for option, message in [
        ("-aic-num-cores=8", "--compiler-option -aic-num-cores=8 is set by the export itself: use --num-cores"),
        ("-aic-binary-dir=/x", "--compiler-option -aic-binary-dir=/x is set by the export itself; leave it out"),
        (
            "sub-functions",
            (
                "--compiler-option 'sub-functions' is not a compiler option: give one option "
                "starting with '-', written with '=' (--compiler-option=-sub-functions)"
            ),
        ),
    ]:
        settings = ExportSettings(
            model=tiny_dirs["gpt_oss"], output=str(tmp_path / "out"), compile="never", compiler_options=[option]
        )
        with pytest.raises(UserError) as raised:
            run_export(settings)
        assert str(raised.value) == message
        assert os.listdir(tmp_path) == []  # no staging dir, no output


def test_a_cache_that_cannot_be_created_is_skipped_with_a_warning(setup, tmp_path, monkeypatch):
    out, cc, _, _ = setup
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("OPTIMUM_QAIC_MOE_CACHE", str(tmp_path / "a-file" / "cache"))  # fails even for root
    lines = compile_export(out, cc)
    assert (
        f"[qaic] warning: not using the compile cache: {tmp_path}/a-file/cache cannot be created (Not a "
        "directory) (make it a private directory of yours, e.g. chmod 700, or set $OPTIMUM_QAIC_MOE_CACHE "
        "to one)" in lines
    )
    assert (out / "decode" / "qpc" / "programqpc.bin").read_bytes() == b"stand-in qpc"


def test_a_compiler_that_cannot_start_is_one_clear_error(setup, tmp_path):
    out, _, _, _ = setup
    broken = tmp_path / "bin" / "qaic-compile-broken"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    with pytest.raises(UserError, match=f"^could not run the compiler {broken}: No such file or directory$"):
        compile_export(out, broken)
    assert not (out / "prefill" / "qpc").exists()
