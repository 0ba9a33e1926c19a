"""The compile step: pick the compile backend (a plugin), then compile, or write compile.sh to run later.

``--compile auto``: compile when the backend finds its compiler, else write compile.sh and say so.
``--compile always``: no compiler is an error (raised before any export work).
``--compile never``: write compile.sh only.

It runs after the export is published, so an interrupt here leaves a complete (uncompiled) export, and says so.
Everything printed for a shell (the hint, compile.sh) is quoted: output names may hold any character.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable

from ..logging import info
from ..settings import ExportSettings, UserError


class CompileInterrupted(KeyboardInterrupt):
    """An interrupt during the compile step; its message says what was left (the CLI prints it)."""


def shell_quote(text: str) -> str:
    """One shell word for ``text`` on one line: shlex.quote, or bash's $'...' when it holds a newline or another
    unprintable character (which would otherwise split the word across lines)."""
    if text.isprintable():
        return shlex.quote(text)
    out = []
    for ch in text:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape")))
    return "$'" + "".join(out) + "'"


def shell_join(argv: list[str]) -> str:
    return " ".join(shell_quote(a) for a in argv)


class ResolvedBackend:
    def __init__(self, backend, compiler_path: str | None):
        self.backend = backend
        self.compiler_path = compiler_path


def resolve_backend(settings: ExportSettings) -> ResolvedBackend:
    from ..plugins import get_compile_backends

    backends = get_compile_backends()
    name = settings.compile_backend
    if name not in backends:
        raise UserError(
            f"--compile-backend {name} is not registered: registered are {', '.join(sorted(backends))} "
            "(a plugin can add more)"
        )
    backend = backends[name]
    if hasattr(backend, "check_settings"):
        backend.check_settings(settings)
    path = backend.find_compiler(settings.compiler) if settings.compile != "never" else None
    if settings.compile == "always" and path is None:
        raise UserError(
            f"--compile always, but no compiler was found ({backend.search_description()}): "
            "install the QAIC platform SDK or pass --compiler PATH"
        )
    return ResolvedBackend(backend, path)


SCRIPT_HEADER = """#!/usr/bin/env bash
# Compile the exported graphs for Cloud AI 100 (written by optimum-qaic-moe).
set -euo pipefail
# Run from the export directory. ${0%/*}, unlike $(dirname "$0"), keeps a trailing newline of the name.
case "$0" in */*) cd -- "${0%/*}" ;; esac
"""


def write_compile_script(output_dir: str, commands) -> str:
    path = os.path.join(output_dir, "compile.sh")
    with open(path, "w") as f:
        f.write(SCRIPT_HEADER)
        f.writelines(f"# {graph}\n{shell_join(argv)}\n" for graph, argv in commands)
    os.chmod(path, 0o755)
    return path


def write_compile_files(export_dir: str, settings: ExportSettings, resolved: ResolvedBackend):
    """Write compile.sh (and what the commands read besides the graphs) into the export; return the commands."""
    compiler = resolved.compiler_path or (os.path.abspath(settings.compiler) if settings.compiler else None)
    commands = resolved.backend.commands(export_dir, settings, compiler)
    write_compile_script(export_dir, commands)
    return commands


def compile_export(
    output_dir: str,
    settings: ExportSettings,
    resolved: ResolvedBackend,
    commands=None,
    say: Callable[[str], None] = info,
) -> None:
    """Compile the published export in place (each graph's qpc/ appears only when complete), or say how to.
    ``commands``: those ``write_compile_files`` returned when the export was staged (else compile.sh is written
    now)."""
    backend = resolved.backend
    if commands is None:
        commands = write_compile_files(output_dir, settings, resolved)
    later = f"bash {shell_quote(os.path.join(output_dir, 'compile.sh'))}"
    if resolved.compiler_path is None:
        why = "--compile never" if settings.compile == "never" else "no QAIC compiler found"
        say(f"not compiled ({why}); to compile later run: {later}")
        return
    graph = None
    try:
        for graph, argv in commands:
            backend.compile(output_dir, graph, argv, say=say)
    except OSError as e:  # a full disk, a vanished directory: the export itself is complete
        raise UserError(
            f"compiling the {graph} graph failed: {e}; the export in {output_dir} is complete: fix that and run {later}"
        ) from e
    except KeyboardInterrupt:
        raise CompileInterrupted(
            f"interrupted while compiling; the export in {output_dir} is complete, but "
            f"graphs without a qpc/ are not compiled: run {later}"
        ) from None
