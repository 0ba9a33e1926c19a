"""The qaic-compile backend (built in, registered through the compile-backend hook like any plugin).

Command shape (QAIC platform SDK):
  qaic-compile -aic-hw -aic-hw-version=ai100 -m=model.onnx -retained-state -convert-to-fp16 -aic-num-cores=N
    [-mxfp6-matmul] [-mos=M] [-aic-enable-depth-first] [-mdp-load-partition-config=mdp.json] [options given]
    -network-specialization-config=specializations.json -custom-IO-list-file=custom_io.yaml -aic-binary-dir=qpc
Older SDKs ship ``qaic-exec``, which needs ``-compile-only``. ``-aic-hw-version`` is asked from ``qaic-util``
unless given. The compiler's output is streamed as it runs.

Results are cached by a hash of everything the compiler reads (its own executable, every file an option names,
each framed by name and length), so an identical second compile returns at once. The cache is trusted only
as far as it is private: its root must belong to the user and be writable by nobody else, entries are made
0700/0600 and an entry holding anything but our own private regular files (a symlink, another owner) is
recompiled, never copied into an export.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable

from ..plugins import hookimpl
from ..settings import ExportSettings, UserError
from . import shell_join

SDK_DIR = "/opt/qti-aic/exec"
QAIC_UTIL = "/opt/qti-aic/tools/qaic-util"
CACHE_ENV = "OPTIMUM_QAIC_MOE_CACHE"
# Options this backend writes itself: a --compiler-option repeating one names the export option to use instead.
OWN_OPTIONS = {
    "-m": None,
    "-aic-binary-dir": None,
    "-network-specialization-config": None,
    "-custom-IO-list-file": None,
    "-aic-hw": None,
    "-retained-state": None,
    "-convert-to-fp16": None,
    "-compile-only": None,
    "-aic-hw-version": "--aic-hw-version",
    "-aic-num-cores": "--num-cores",
    "-mxfp6-matmul": "--mxfp6-matmul",
    "-mos": "--mos",
    "-aic-enable-depth-first": "--aic-enable-depth-first",
    "-mdp-load-partition-config": "--num-devices",
}


def cache_root() -> str:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "optimum_qaic_moe", "qpc")
    return os.path.abspath(root)  # the compiler runs in the export directory: a relative root must not follow


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def detect_hw_version() -> str | None:
    """'ai200' or 'ai100' from the first card's firmware variant in ``qaic-util -q``; None without the tool."""
    exe = shutil.which("qaic-util") or (QAIC_UTIL if _executable(QAIC_UTIL) else None)
    if exe is None:
        return None
    try:
        report = subprocess.run([exe, "-q"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"FW IMAGE_VARIANT\s*:\s*(\S+)", report)
    if match is None:
        return None
    return "ai200" if "AIC200" in match.group(1).upper() else "ai100"


def check_compiler_options(options: list[str]) -> None:
    for option in options:
        name = option.split("=", 1)[0]
        if not option.startswith("-") or any(c in option for c in "\n\r\0"):
            raise UserError(
                f"--compiler-option {option!r} is not a compiler option: give one option starting "
                "with '-', written with '=' (--compiler-option=-sub-functions)"
            )
        if name in OWN_OPTIONS:
            instead = OWN_OPTIONS[name]
            raise UserError(
                f"--compiler-option {option} is set by the export itself"
                + (f": use {instead}" if instead else "; leave it out")
            )


def _absolute_file_values(option: str) -> str:
    """``-x=FILE`` naming an existing file relative to here -> absolute (the compiler runs in the export)."""
    name, sep, value = option.partition("=")
    if sep and value and not os.path.isabs(value) and os.path.isfile(value):
        return f"{name}={os.path.abspath(value)}"
    return option


# -- the cache: what it trusts --------------------------------------------------------------------------------


def _not_private(path: str, st: os.stat_result, group_other_bits: int) -> str | None:
    if st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})"
    if st.st_mode & group_other_bits:
        return f"{path} is writable or readable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def cache_root_problem(root: str) -> str | None:
    """Why the cache root cannot be trusted (None: it can): it must be ours and writable by nobody else."""
    st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        return f"{root} is not a directory"
    return _not_private(root, st, 0o022)


def cache_entry_problem(entry: str) -> str | None:
    """Why a cache entry cannot be used: every item in it must be our own private directory or regular file
    (never a symlink: one could make us copy any file the export's user can read)."""
    paths = [entry]
    for top, dirs, files in os.walk(entry):
        paths += [os.path.join(top, name) for name in dirs + files]
    for path in paths:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return f"{path} is a symlink"
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return f"{path} is not a regular file"
        problem = _not_private(path, st, 0o077)
        if problem:
            return problem
    return None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)  # does not follow symlinks inside
    else:
        os.remove(path)


def make_private(top: str) -> None:
    """Directories 0700, files 0600, for a compiler result about to enter the cache."""
    for path, _dirs, files in os.walk(top):
        os.chmod(path, 0o700)
        for name in files:
            os.chmod(os.path.join(path, name), 0o600)


def copy_entry(entry: str, target: str) -> None:
    """Copy a checked cache entry into an export: contents only (the export gets ordinary modes)."""
    for top, _dirs, files in os.walk(entry):
        here = os.path.join(target, os.path.relpath(top, entry))
        os.makedirs(here, exist_ok=True)
        for name in files:
            shutil.copyfile(os.path.join(top, name), os.path.join(here, name), follow_symlinks=False)


def _onnx_external_data(path: str) -> list[str]:
    """Paths of the external-data files an ONNX graph references (its weights, for a large model)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    found = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found.add(next(e.value for e in tensor.external_data if e.key == "location"))
    return [os.path.join(os.path.dirname(path), location) for location in sorted(found)]


def _hash_file(h, label: str, path: str) -> None:
    """One framed record: label, size, contents; so no two different sets of files hash alike."""
    size = os.path.getsize(path)
    h.update(f"{label}\0{size}\0".encode("utf-8", "surrogateescape"))
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)


def _run_streaming(argv: list[str], cwd: str, say: Callable[[str], None], graph: str) -> tuple[int, list[str]]:
    """Run the compiler, passing each line of its output on as it comes. Returns (exit code, last lines).
    Interrupted, it stops the compiler before re-raising."""
    tail: collections.deque[str] = collections.deque(maxlen=5)
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
        )
    except OSError as e:
        raise UserError(f"could not run the compiler {argv[0]}: {e.strerror or e}") from e
    assert proc.stdout is not None  # stdout=PIPE
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                say(f"[qaic]   {graph}: {line}")
        return proc.wait(), list(tail)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


class QAICCompileBackend:
    name = "qaic-compile"

    def search_description(self) -> str:
        return f"looked for --compiler, qaic-compile or qaic-exec on PATH, and {SDK_DIR}"

    def find_compiler(self, explicit: str | None) -> str | None:
        if explicit:
            if not _executable(explicit):
                raise UserError(f"--compiler {explicit} is not an executable file")
            return os.path.abspath(explicit)
        for name in ("qaic-compile", "qaic-exec"):
            found = shutil.which(name)
            if found:
                return found
            if _executable(os.path.join(SDK_DIR, name)):
                return os.path.join(SDK_DIR, name)
        return None

    def check_settings(self, settings: ExportSettings) -> None:
        """Refuse bad compiler input before the export work starts."""
        check_compiler_options(settings.compiler_options or [])

    def command(
        self, graph_dir: str, settings: ExportSettings, compiler: str | None, hw_version: str | None = None
    ) -> list[str]:
        """argv for one graph; paths relative to the export directory (compile.sh cd's there)."""
        exe = compiler or os.path.join(SDK_DIR, "qaic-compile")
        g = os.path.basename(graph_dir)
        hw = hw_version or (settings.aic_hw_version if settings.aic_hw_version != "auto" else "ai100")
        argv = [
            exe,
            "-aic-hw",
            f"-aic-hw-version={hw}",
            f"-m={g}.onnx",
            "-retained-state",
            "-convert-to-fp16",
            f"-aic-num-cores={settings.num_cores}",
        ]
        if os.path.basename(exe).startswith("qaic-exec"):
            argv.insert(1, "-compile-only")
        if settings.mxfp6_matmul:
            argv.append("-mxfp6-matmul")
        if settings.mos is not None:
            argv.append(f"-mos={settings.mos}")
        if settings.aic_enable_depth_first:
            argv.append("-aic-enable-depth-first")
        if settings.num_devices > 1:
            argv.append(f"-mdp-load-partition-config={g}/mdp_partition.json")
        argv += [_absolute_file_values(o) for o in settings.compiler_options or []]
        argv += [
            f"-network-specialization-config={g}/specializations.json",
            f"-custom-IO-list-file={g}/custom_io.yaml",
            f"-aic-binary-dir={g}/qpc",
        ]
        return argv

    def commands(self, output_dir: str, settings: ExportSettings, compiler: str | None):
        hw: str = settings.aic_hw_version
        if hw == "auto":
            hw = detect_hw_version() or "ai100"
        out = []
        for graph in settings.graphs:
            if settings.num_devices > 1:
                write_partition_config(os.path.join(output_dir, graph, "mdp_partition.json"), settings)
            out.append((graph, self.command(os.path.join(output_dir, graph), settings, compiler, hw)))
        return out

    def cache_key(self, output_dir: str, argv: list[str]) -> str:
        """sha256 over the command (without its output dir), the compiler's contents and every file an option
        names (an ONNX graph with its external data), each framed by name and size."""
        h = hashlib.sha256()
        h.update(json.dumps([a for a in argv[1:] if not a.startswith("-aic-binary-dir=")]).encode())
        exe = shutil.which(argv[0]) or argv[0]
        if os.path.isfile(exe):
            _hash_file(h, "compiler", exe)
        for arg in argv[1:]:
            name, sep, value = arg.partition("=")
            path = os.path.join(output_dir, value)
            if not sep or name == "-aic-binary-dir" or not os.path.isfile(path):
                continue
            _hash_file(h, arg, path)
            if path.endswith(".onnx"):
                for data in _onnx_external_data(path):
                    _hash_file(h, f"{arg} external data {os.path.relpath(data, os.path.dirname(path))}", data)
        return h.hexdigest()

    def _compile_into(self, work: str, output_dir: str, graph: str, argv: list[str], say) -> str:
        """Run the compiler with its binary dir in ``work``; returns the private qpc dir it wrote."""
        run_argv = [a if not a.startswith("-aic-binary-dir=") else f"-aic-binary-dir={work}/qpc" for a in argv]
        say(f"[qaic] compile {graph}: {shell_join(argv)}")
        code, tail = _run_streaming(run_argv, output_dir, say, graph)
        qpc = os.path.join(work, "qpc")
        if code != 0 or not os.path.isfile(os.path.join(qpc, "programqpc.bin")):
            raise UserError(
                f"{os.path.basename(argv[0])} failed for the {graph} graph (exit {code}): "
                + (" | ".join(tail) or "it wrote no programqpc.bin")
            )
        make_private(qpc)
        problem = cache_entry_problem(qpc)
        if problem:
            raise UserError(f"{os.path.basename(argv[0])} left an unexpected file for the {graph} graph: {problem}")
        return qpc

    def compile(self, output_dir: str, graph: str, argv: list[str], say=print) -> str:
        """Run the compiler for one graph (or reuse the cached result). Returns the qpc directory."""
        root = cache_root()
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
            untrusted = cache_root_problem(root)
        except OSError as e:
            untrusted = f"{root} cannot be created ({e.strerror or e})"
        if untrusted:
            say(
                f"[qaic] warning: not using the compile cache: {untrusted} (make it a private directory of "
                f"yours, e.g. chmod 700, or set ${CACHE_ENV} to one)"
            )
        key = self.cache_key(output_dir, argv)
        entry = os.path.join(root, key)
        work = tempfile.mkdtemp(prefix=f"{key[:12]}.", dir=None if untrusted else root)  # 0700
        try:
            if untrusted:
                entry = self._compile_into(work, output_dir, graph, argv, say)
            elif (
                os.path.lexists(entry)
                and cache_entry_problem(entry) is None
                and os.path.isfile(os.path.join(entry, "programqpc.bin"))
            ):
                say(f"[qaic] compile {graph}: cached ({entry})")
            else:
                if os.path.lexists(entry):
                    say(f"[qaic] compile {graph}: not using the cache entry: {cache_entry_problem(entry)}")
                    _remove(entry)
                qpc = self._compile_into(work, output_dir, graph, argv, say)
                try:
                    os.replace(qpc, entry)
                except OSError:  # a concurrent compile of the same inputs got there first: use ours
                    entry = qpc
            return self._install(entry, os.path.join(output_dir, graph, "qpc"))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _install(entry: str, target: str) -> str:
        """Copy into the export next to the target, then swap: never a half-copied qpc/ that looks complete."""
        partial = f"{target}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            copy_entry(entry, partial)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target


def write_partition_config(path: str, settings: ExportSettings) -> None:
    """Multi-device partition: one partition over ``num_devices`` devices, ``num_cores`` cores each."""
    devices = list(range(settings.num_devices))
    config = {
        "connections": [{"devices": devices, "type": "p2p"}],
        "partitions": [
            {"name": "Partition0", "devices": [{"deviceId": d, "numCores": settings.num_cores} for d in devices]}
        ],
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


@hookimpl
def register_compile_backends(register):
    register(QAICCompileBackend())
