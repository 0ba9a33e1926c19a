"""The qaic-compile backend (built in, registered through the compile-backend hook like any plugin).

Command shape (QAIC platform SDK):
  qaic-compile -aic-hw -aic-hw-version=ai100 -m=model.onnx -retained-state -convert-to-fp16 -aic-num-cores=N
    [-mxfp6-matmul] [-mos=M] [-aic-enable-depth-first] [-mdp-load-partition-config=mdp.json]
    -network-specialization-config=specializations.json -custom-IO-list-file=custom_io.yaml -aic-binary-dir=qpc
Older SDKs ship ``qaic-exec``, which needs ``-compile-only``. Results are cached by a hash of everything the
compiler reads, so an identical second compile returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from typing import List, Optional

from ..plugins import hookimpl
from ..settings import ExportSettings, UserError

SDK_DIR = "/opt/qti-aic/exec"
CACHE_ENV = "OPTIMUM_QAIC_MOE_CACHE"


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "optimum_qaic_moe", "qpc")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


class QAICCompileBackend:
    name = "qaic-compile"

    def search_description(self) -> str:
        return f"looked for --compiler, qaic-compile or qaic-exec on PATH, and {SDK_DIR}"

    def find_compiler(self, explicit: Optional[str]) -> Optional[str]:
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

    def command(self, graph_dir: str, settings: ExportSettings, compiler: Optional[str]) -> List[str]:
        """argv for one graph; paths relative to the export directory (compile.sh cd's there)."""
        exe = compiler or os.path.join(SDK_DIR, "qaic-compile")
        g = os.path.basename(graph_dir)
        argv = [exe, "-aic-hw", f"-aic-hw-version={settings.aic_hw_version}", f"-m={g}.onnx",
                "-retained-state", "-convert-to-fp16", f"-aic-num-cores={settings.num_cores}"]
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
        argv += [f"-network-specialization-config={g}/specializations.json",
                 f"-custom-IO-list-file={g}/custom_io.yaml", f"-aic-binary-dir={g}/qpc"]
        return argv

    def commands(self, output_dir: str, settings: ExportSettings, compiler: Optional[str]):
        out = []
        for graph in settings.graphs:
            if settings.num_devices > 1:
                write_partition_config(os.path.join(output_dir, graph, "mdp_partition.json"), settings)
            out.append((graph, self.command(os.path.join(output_dir, graph), settings, compiler)))
        return out

    def cache_key(self, output_dir: str, argv: List[str]) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([a for a in argv if not a.startswith("-aic-binary-dir=")]).encode())
        exe = argv[0]
        h.update(str(os.stat(exe).st_mtime_ns if os.path.exists(exe) else "").encode())
        for arg in argv[1:]:
            if "=" not in arg:
                continue
            path = os.path.join(output_dir, arg.split("=", 1)[1])
            weights = os.path.join(os.path.dirname(path), "weights.data") if arg.startswith("-m=") else None
            for p in (path, weights):
                if p and os.path.isfile(p):
                    with open(p, "rb") as f:
                        for block in iter(lambda: f.read(1 << 24), b""):
                            h.update(block)
        return h.hexdigest()

    def compile(self, output_dir: str, graph: str, argv: List[str], say=print) -> str:
        """Run the compiler for one graph (or reuse the cached result). Returns the qpc directory."""
        target = os.path.join(output_dir, graph, "qpc")
        key = self.cache_key(output_dir, argv)
        cached = os.path.join(cache_root(), key)
        if os.path.isfile(os.path.join(cached, "programqpc.bin")):
            say(f"[qaic] compile {graph}: cached ({cached})")
        else:
            os.makedirs(cache_root(), exist_ok=True)
            work = tempfile.mkdtemp(prefix=f"{key[:12]}.", dir=cache_root())
            run_argv = [a if not a.startswith("-aic-binary-dir=") else f"-aic-binary-dir={work}/qpc" for a in argv]
            say(f"[qaic] compile {graph}: {' '.join(argv)}")
            proc = subprocess.run(run_argv, cwd=output_dir, capture_output=True, text=True)
            if proc.returncode != 0 or not os.path.isfile(os.path.join(work, "qpc", "programqpc.bin")):
                shutil.rmtree(work, ignore_errors=True)
                tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-20:]
                raise UserError(f"{os.path.basename(argv[0])} failed for the {graph} graph (exit "
                                f"{proc.returncode}): " + (" | ".join(tail) or "it wrote no programqpc.bin"))
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(os.path.join(work, "qpc"), cached)
            shutil.rmtree(work, ignore_errors=True)
        partial = f"{target}.partial-{os.getpid()}"  # never a half-copied qpc/ that looks complete
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(cached, partial)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        return target


def write_partition_config(path: str, settings: ExportSettings) -> None:
    """Multi-device partition: one partition over ``num_devices`` devices, ``num_cores`` cores each."""
    devices = list(range(settings.num_devices))
    config = {
        "connections": [{"devices": devices, "type": "p2p"}],
        "partitions": [{"name": "Partition0",
                        "devices": [{"deviceId": d, "numCores": settings.num_cores} for d in devices]}],
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


@hookimpl
def register_compile_backends(register):
    register(QAICCompileBackend())
