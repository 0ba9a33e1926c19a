"""The plugin manager: which plugins are loaded and what they register (the hooks are in ``hookspecs.py``).

The built-in support is plugins too: every module of ``optimum_qaic_moe.architectures`` (one per model family;
adding one needs no edit here) and the qaic-compile backend. Third-party plugins come from the entry points of
the group ``optimum_qaic_moe``; ``OPTIMUM_QAIC_MOE_DISABLE_PLUGINS=1`` loads the built-ins only.

A plugin that breaks the contract is a ``PluginError`` (a ``QAICError``: one line through the CLI) naming the
plugin and its distribution, raised when plugins load or when their hooks run: a module that fails to import, a
hook name that no spec has (a typo would otherwise never run), hook arguments the spec lacks, two plugins
registering one name, a registered object that does not fit.

Importing this module costs pluggy only; loading the plugins imports the built-in architectures (torch).
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .hookspecs import PROJECT, CompileBackend, hookimpl, hookspec  # noqa: F401 (plugins import hookimpl here)
from .settings import QAICError

if TYPE_CHECKING:
    from .architectures.export_config import QAICCausalLMExportConfig

ENTRY_POINT_GROUP = "optimum_qaic_moe"
DISABLE_ENV = "OPTIMUM_QAIC_MOE_DISABLE_PLUGINS"
DISTRIBUTION = "optimum-qaic-moe"  # the built-ins' distribution

ARCHITECTURES_PACKAGE = "optimum_qaic_moe.architectures"
NOT_ARCHITECTURES = ("base", "export_config")
COMPILE_BACKEND_MODULES = ("optimum_qaic_moe.compiler.qaic",)

HOOKS = tuple(sorted(name for name, f in vars(hookspecs).items() if hasattr(f, f"{PROJECT}_spec")))
BACKEND_MEMBERS = tuple(CompileBackend.__annotations__) + tuple(
    name for name in vars(CompileBackend) if not name.startswith("_") and callable(vars(CompileBackend)[name])
)
FIX = f"fix or uninstall the plugin, or set {DISABLE_ENV}=1 to load the built-ins only"


class PluginError(QAICError, RuntimeError):
    """A plugin that breaks the contract of ``hookspecs.py`` (the CLI prints it as one line)."""


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering the distribution (name, version) of each plugin it loaded: the built-ins'
    own, an entry point's."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple] = {}

    def describe(self, name: str) -> str:
        """``plugin 'name' (distribution version)``: who to blame or to uninstall."""
        dist = self.distributions.get(name)
        return f"plugin {name!r}" + (f" ({dist[0]} {dist[1]})" if dist else "")


def builtin_plugins() -> tuple:
    """The modules holding the built-in hook implementations. Registered directly, never also as entry points:
    pluggy refuses to register one plugin twice."""
    import pkgutil

    package = importlib.import_module(ARCHITECTURES_PACKAGE)
    modules = sorted(
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_") and m.name not in NOT_ARCHITECTURES
    )
    return tuple(f"{ARCHITECTURES_PACKAGE}.{m}" for m in modules) + COMPILE_BACKEND_MODULES


def plugins_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").lower() in ("1", "true", "yes")


def new_plugin_manager(extra: Iterable[Any] = ()) -> PluginManager:
    """The built-ins, the installed entry points (unless disabled) and ``extra`` (plugins registered in-process),
    checked: every hook a plugin implements has a spec."""
    pm = PluginManager()
    for name in builtin_plugins():
        pm.register(importlib.import_module(name), name=name)
        pm.distributions[name] = (DISTRIBUTION, _own_version())
    if not plugins_disabled():
        _load_entry_points(pm)
    for plugin in extra:
        _register(pm, plugin, None)
    _check_pending(pm)
    return pm


def _load_entry_points(pm: PluginManager) -> None:
    from importlib import metadata

    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue  # a distribution found twice on sys.path loads once
            pm.distributions[ep.name] = (dist.metadata["name"], dist.version)
            try:
                plugin = ep.load()
            except Exception as e:  # whatever a broken plugin raises: name the plugin, not our traceback
                raise PluginError(
                    f"{pm.describe(ep.name)} failed to import ({ep.value}): {type(e).__name__}: {_one_line(e)}; {FIX}"
                ) from e
            _register(pm, plugin, ep.name)


def _register(pm: PluginManager, plugin, name: str | None) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as e:  # hook arguments the spec lacks; registered twice
        raise PluginError(
            f"{pm.describe(name or pm.get_canonical_name(plugin))} cannot be registered: {_one_line(e)}; {FIX}"
        ) from e


def _check_pending(pm: PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        unknown = sorted(c.name for c in pm.get_hookcallers(e.plugin) or () if not c.has_spec())
        guesses = [
            f" (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, HOOKS, n=1)) else "" for u in unknown
        ]
        named = ", ".join(u + g for u, g in zip(unknown, guesses))
        plugin = pm.get_name(e.plugin) or pm.get_canonical_name(e.plugin)  # registered, so named
        raise PluginError(
            f"{pm.describe(plugin)} implements {named}, which is not a hook of "
            f"optimum_qaic_moe (the hooks: {', '.join(HOOKS)}); {FIX}"
        ) from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# -- the loaded plugins ----------------------------------------------------------------------------------------

_pm: PluginManager | None = None
_extra: tuple = ()


def get_plugin_manager() -> PluginManager:
    """The plugin manager of this process, loaded at first use."""
    global _pm
    if _pm is None:
        _pm = new_plugin_manager(_extra)
    return _pm


@contextmanager
def extra_plugins(*plugins) -> Iterator[None]:
    """Within the block, also load these plugins (modules or objects with ``@hookimpl`` functions), registered
    in-process: a plugin without a distribution, e.g. in a test. Loading happens at first use inside the block,
    so a broken plugin fails where it would from an entry point."""
    global _pm, _extra
    saved = _pm, _extra
    _pm, _extra = None, tuple(plugins)
    try:
        yield
    finally:
        _pm, _extra = saved


def _collect(hook: str, key: Callable[[Any], str], problem: Callable[[Any], str | None], what: str) -> dict:
    """{key(item): item} over every ``register(item)`` call of every implementation of ``hook``."""
    pm = get_plugin_manager()
    found: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():  # in registration order: the built-ins first

        def register(item, _plugin=impl.plugin_name):
            wrong = problem(item)
            if wrong:
                raise PluginError(f"{pm.describe(_plugin)} registers {wrong}; {FIX}")
            name = key(item)
            if name in found:
                raise PluginError(
                    f"{pm.describe(owner[name])} and {pm.describe(_plugin)} both register the {what} "
                    f"{name!r}: uninstall one of them"
                )
            found[name], owner[name] = item, _plugin

        impl.function(register=register)
    return found


def _architecture_problem(arch) -> str | None:
    from .architectures.base import Architecture

    if not isinstance(arch, Architecture):
        return f"{arch!r} as an architecture, which is not an instance of an optimum_qaic_moe Architecture subclass"
    if not isinstance(arch.model_type, str) or not arch.model_type:
        return f"the architecture {type(arch).__name__} without a model_type"
    return None


def _backend_problem(backend) -> str | None:
    missing = [m for m in BACKEND_MEMBERS if not hasattr(backend, m)]
    if missing:
        return f"the compile backend {backend!r} without {', '.join(missing)} (see CompileBackend in hookspecs.py)"
    if not isinstance(backend.name, str) or not backend.name:
        return f"the compile backend {backend!r} without a name"
    return None


def get_architectures() -> dict[str, Any]:
    """``{model_type: architecture}`` over all plugins."""
    return _collect("register_architectures", lambda arch: arch.model_type, _architecture_problem, "architecture")


def get_compile_backends() -> dict[str, CompileBackend]:
    """``{name: backend}`` over all plugins."""
    return _collect("register_compile_backends", lambda backend: backend.name, _backend_problem, "compile backend")


def get_export_configs() -> dict[str, type]:
    """``{model_type: export config class}`` of every architecture, also registered with Optimum's TasksManager
    (exporter ``qaic``)."""
    from optimum.exporters.tasks import TasksManager

    configs = {}
    register = TasksManager.create_register("qaic", overwrite_existing=True)
    for model_type, arch in get_architectures().items():
        base: type[QAICCausalLMExportConfig] = arch.export_config_class
        cls = type(f"{type(arch).__name__}ExportConfig", (base,), {"architecture": arch})
        configs[model_type] = register(model_type, *base.SUPPORTED_TASKS)(cls)  # cls inherits base's tasks
    return configs


# -- what `optimum-cli export qaic --list-plugins` prints --------------------------------------------------------

REGISTERED = {
    "register_architectures": ("architectures", lambda arch: arch.model_type),
    "register_compile_backends": ("compile_backends", lambda backend: backend.name),
}


def list_plugins() -> list[dict]:
    """Each loaded plugin: its name, distribution and version, the hooks it implements and what it registers."""
    pm = get_plugin_manager()
    get_architectures(), get_compile_backends()  # the contract checks, before anything is listed
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist, version = pm.distributions.get(name, (None, None))  # None: registered in-process
        callers = pm.get_hookcallers(plugin) or []
        entry = {"name": name, "distribution": dist, "version": version, "hooks": sorted(c.name for c in callers)}
        for caller in callers:
            if caller.name not in REGISTERED:
                continue
            label, key = REGISTERED[caller.name]
            items: list = []
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(register=items.append)
            entry[label] = [key(item) for item in items]
        out.append(entry)
    return out


def _own_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree
        from . import __version__

        return __version__
