"""The compile step: pick the compile backend (a plugin), then compile, or write compile.sh to run later.

``--compile auto``: compile when the backend finds its compiler, else write compile.sh and say so.
``--compile always``: no compiler is an error (raised before any export work).
``--compile never``: write compile.sh only.
"""

from __future__ import annotations

import os
import shlex
from typing import Callable, Optional

from ..settings import ExportSettings, UserError

DEFAULT_BACKEND = "qaic-compile"


class ResolvedBackend:
    def __init__(self, backend, compiler_path: Optional[str]):
        self.backend = backend
        self.compiler_path = compiler_path


def resolve_backend(settings: ExportSettings) -> ResolvedBackend:
    from ..plugins import get_compile_backends

    backends = get_compile_backends()
    name = settings.extra.get("compile_backend", DEFAULT_BACKEND)
    if name not in backends:
        raise UserError(f"unknown compile backend {name!r}: registered are {', '.join(sorted(backends))}")
    backend = backends[name]
    path = backend.find_compiler(settings.compiler) if settings.compile != "never" else None
    if settings.compile == "always" and path is None:
        raise UserError(f"--compile always, but no compiler was found ({backend.search_description()}): "
                        "install the QAIC platform SDK or pass --compiler PATH")
    return ResolvedBackend(backend, path)


def write_compile_script(output_dir: str, commands) -> str:
    path = os.path.join(output_dir, "compile.sh")
    with open(path, "w") as f:
        f.write("#!/usr/bin/env bash\n# Compile the exported graphs for Cloud AI 100 (written by optimum-qaic-moe).\n")
        f.write("set -euo pipefail\ncd \"$(dirname \"$0\")\"\n")
        for graph, argv in commands:
            f.write(f"# {graph}\n{shlex.join(argv)}\n")
    os.chmod(path, 0o755)
    return path


def write_compile_files(export_dir: str, settings: ExportSettings, resolved: ResolvedBackend):
    """Write compile.sh (and what the commands read besides the graphs) into the export; return the commands."""
    commands = resolved.backend.commands(export_dir, settings, resolved.compiler_path)
    write_compile_script(export_dir, commands)
    return commands


def compile_export(output_dir: str, settings: ExportSettings, resolved: ResolvedBackend, commands,
                   say: Callable[[str], None] = print) -> None:
    """Compile the published export in place (each graph's qpc/ appears only when complete), or say how to."""
    if resolved.compiler_path is None:
        why = "--compile never" if settings.compile == "never" else "no QAIC compiler found"
        script = shlex.quote(os.path.join(output_dir, "compile.sh"))
        say(f"[qaic] not compiled ({why}); to compile later run: bash {script}")
        return
    for graph, argv in commands:
        resolved.backend.compile(output_dir, graph, argv, say=say)
