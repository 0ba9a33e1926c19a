"""Hook specifications and the plugin manager.

Two things are pluggable, each through one hook that receives a ``register`` callback:

* architectures: how a transformers ``model_type`` becomes the QAIC graph modules (attention, MoE, cache layout)
  and its export config (also registered with Optimum's ``TasksManager`` under the exporter name ``qaic``),
* compile backends: what turns an exported graph into a device program.

Built-in support (Qwen3-MoE, GPT-OSS, qaic-compile) is registered through these same hooks. Third-party
distributions add an entry point in the group ``optimum_qaic_moe``. Setting
``OPTIMUM_QAIC_MOE_DISABLE_PLUGINS=1`` loads the built-ins only.

This module imports neither torch nor onnx: the CLI uses it before deciding to do heavy work.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict

import pluggy

from .settings import QAICError

PROJECT = "optimum_qaic_moe"
ENTRY_POINT_GROUP = "optimum_qaic_moe"
DISABLE_ENV = "OPTIMUM_QAIC_MOE_DISABLE_PLUGINS"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# Modules that implement the built-in hooks: every architecture module (one per model family: adding one needs
# no edit here) and the qaic-compile backend. Registered directly, never also as entry points: pluggy refuses to
# register the same plugin twice.
ARCHITECTURES_PACKAGE = "optimum_qaic_moe.architectures"
NOT_ARCHITECTURES = ("base", "export_config")


def builtin_plugins() -> tuple:
    import importlib
    import pkgutil

    package = importlib.import_module(ARCHITECTURES_PACKAGE)
    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                     if not m.name.startswith("_") and m.name not in NOT_ARCHITECTURES)
    return tuple(f"{ARCHITECTURES_PACKAGE}.{m}" for m in modules) + ("optimum_qaic_moe.compiler.qaic",)


class Hookspecs:
    @hookspec
    def register_architectures(self, register: Callable[[Any], None]) -> None:
        """Call ``register(architecture)`` for each architecture this plugin supports.

        ``architecture`` has a ``model_type`` attribute (the transformers ``config.model_type``) and builds the
        QAIC graph modules; see ``optimum_qaic_moe.architectures.base.Architecture``."""

    @hookspec
    def register_compile_backends(self, register: Callable[[Any], None]) -> None:
        """Call ``register(backend)``; a backend has a ``name`` and ``compile(graph_dir, settings)``."""


class PluginError(QAICError, RuntimeError):
    pass


_pm: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        import importlib

        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(Hookspecs)
        for name in builtin_plugins():
            pm.register(importlib.import_module(name), name=name)
        if os.environ.get(DISABLE_ENV, "").lower() not in ("1", "true", "yes"):
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        _pm = pm
    return _pm


def _collect(hook_name: str, key: Callable[..., str]) -> Dict[str, Any]:
    found: Dict[str, Any] = {}

    def register(*item):
        name = key(*item)
        if name in found:
            raise PluginError(f"two plugins register {hook_name} for {name!r}")
        found[name] = item if len(item) > 1 else item[0]

    getattr(get_plugin_manager().hook, hook_name)(register=register)
    return found


def get_architectures() -> Dict[str, Any]:
    """``{model_type: architecture}`` over all plugins."""
    return _collect("register_architectures", lambda arch: arch.model_type)


def get_export_configs() -> Dict[str, type]:
    """``{model_type: export config class}`` of every architecture, also registered with Optimum's TasksManager
    (exporter ``qaic``)."""
    from optimum.exporters.tasks import TasksManager

    configs = {}
    register = TasksManager.create_register("qaic", overwrite_existing=True)
    for model_type, arch in get_architectures().items():
        base = arch.export_config_class
        cls = type(f"{type(arch).__name__}ExportConfig", (base,), {"architecture": arch})
        configs[model_type] = register(model_type, *cls.SUPPORTED_TASKS)(cls)
    return configs


def get_compile_backends() -> Dict[str, Any]:
    """``{name: backend}`` over all plugins."""
    return _collect("register_compile_backends", lambda backend: backend.name)
