"""The plugin contract: the hooks a plugin implements and what it registers through them.

A plugin is a module (or any object) with functions decorated ``@hookimpl`` whose names are hooks below; a
distribution makes one known through an entry point in the group ``optimum_qaic_moe``. Each hook receives one
argument, ``register``, and calls it once per thing the plugin adds. A hook name that is not below (a typo) is an
error when plugins load, not a hook that silently never runs.

This module imports pluggy and the standard library only: reading the contract costs no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    from .architectures.base import Architecture
    from .settings import ExportSettings

PROJECT = "optimum_qaic_moe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# (graph name, argv) per graph: what a backend runs, and what compile.sh lists
Commands = list[tuple[str, list[str]]]
# CompileBackend members the export calls only when present
OPTIONAL_BACKEND_MEMBERS = ("check_settings",)


@runtime_checkable
class CompileBackend(Protocol):
    """What turns an exported graph into a device program (``--compile-backend NAME``). The export calls, in this
    order:

    0. ``check_settings(settings)``, only if the backend has it (optional), before any export work: raise
       ``UserError`` for settings it cannot compile;
    1. ``find_compiler(explicit)`` before any export work, unless ``--compile never``: ``explicit`` is
       ``--compiler`` (or None); return the compiler's path, or None when none is installed (raise ``UserError``
       when ``explicit`` is unusable);
    2. ``search_description()`` only when ``--compile always`` found no compiler: where it looked, for the error;
    3. ``commands(export_dir, settings, compiler)`` once the graphs are written: one ``(graph, argv)`` per graph
       in ``settings.graphs``, argv relative to ``export_dir`` (``compile.sh`` runs them from there; ``compiler``
       is the path found, else ``--compiler``, else None: then argv names the usual install path); it may write
       the files the commands read into ``export_dir``;
    4. ``compile(output_dir, graph, argv, say=...)`` per graph, only when a compiler was found: run argv, leave
       the program in ``output_dir/graph/qpc/`` (only when complete), report progress through ``say``, raise
       ``UserError`` carrying the compiler's message when it fails.
    """

    name: str  # what --compile-backend selects; unique over all plugins

    def find_compiler(self, explicit: str | None) -> str | None: ...

    def search_description(self) -> str: ...

    def commands(self, export_dir: str, settings: ExportSettings, compiler: str | None) -> Commands: ...

    def compile(self, output_dir: str, graph: str, argv: list[str], say: Callable[[str], None] = print) -> str: ...


@hookspec
def register_architectures(register: Callable[[Architecture], None]) -> None:
    """Call ``register(architecture)`` once per model family this plugin supports.

    ``architecture`` is an instance of a subclass of ``optimum_qaic_moe.architectures.base.Architecture`` whose
    ``model_type`` is the transformers ``config.model_type`` it handles (unique over all plugins). It turns the
    transformers model into the QAIC graph modules, carries its export config (``export_config_class``) and, as
    ``tiny_config``, the config kwargs of a tiny random model that the tests and ``qaic-moe-tiny`` build."""


@hookspec
def register_compile_backends(register: Callable[[CompileBackend], None]) -> None:
    """Call ``register(backend)`` once per compile backend; ``backend`` satisfies ``CompileBackend`` above."""
