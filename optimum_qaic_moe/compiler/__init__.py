"""The compile step: pick the compile backend (a plugin), then compile, or write compile.sh to run later.

``--compile auto``: compile when the backend finds its compiler, else write compile.sh and say so.
``--compile always``: no compiler is an error (raised before any export work).
``--compile never``: write compile.sh only.
"""

from __future__ import annotations

import os
import shlex
from typing import Callable, Optional

from ..logging import info, progress
from ..settings import ExportSettings, UserError


class ResolvedBackend:
    def __init__(self, backend, compiler_path: Optional[str]):
        self.backend = backend
        self.compiler_path = compiler_path


def resolve_backend(settings: ExportSettings) -> ResolvedBackend:
    from ..plugins import get_compile_backends

    backends = get_compile_backends()
    name = settings.compile_backend
    if name not in backends:
        raise UserError(f"--compile-backend {name} is not registered: registered are {', '.join(sorted(backends))} "
                        "(a plugin can add more)")
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


def compile_export(output_dir: str, settings: ExportSettings, resolved: ResolvedBackend,
                   say: Callable[[str], None] = info) -> None:
    backend = resolved.backend
    commands = backend.commands(output_dir, settings, resolved.compiler_path)
    script = write_compile_script(output_dir, commands)
    if resolved.compiler_path is None:
        why = "--compile never" if settings.compile == "never" else "no QAIC compiler found"
        say(f"not compiled ({why}); to compile later run: bash {script}")
        return
    for graph, argv in progress(commands, desc="compile", unit="graph"):
        backend.compile(output_dir, graph, argv, say=say)
