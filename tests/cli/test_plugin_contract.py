"""The plugin contract of hookspecs.py, with test plugins registered in-process: module objects holding @hookimpl
functions, loaded beside the built-ins by ``plugins.extra_plugins`` (nothing to pip-install; the one real
entry-point distribution is in test_plugins.py). A plugin that breaks the contract fails loudly, in one line that
names it."""

import ast
import subprocess
import sys
import types
from importlib import metadata

import pytest

import optimum_qaic_moe.compiler as compiler_package
from optimum_qaic_moe import hookspecs, plugins
from optimum_qaic_moe.architectures.mixtral import MixtralArchitecture
from optimum_qaic_moe.compiler.qaic import QAICCompileBackend
from optimum_qaic_moe.hookspecs import CompileBackend, hookimpl
from optimum_qaic_moe.plugins import PluginError
from optimum_qaic_moe.testing import tiny_configs


def plugin(name, **hooks):
    """A module object whose attributes are hook implementations (pluggy finds hooks by attribute name)."""
    module = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(module, hook, hookimpl(function))
    return module


class DemoArchitecture(MixtralArchitecture):
    model_type = "demo_moe"


class DemoBackend:
    name = "demo-compile"

    def find_compiler(self, explicit):
        return None

    def search_description(self):
        return "nowhere"

    def commands(self, export_dir, settings, compiler):
        return []

    def compile(self, output_dir, graph, argv, say=print):
        return ""


def registering(*things):
    def register_architectures(register):
        for thing in things:
            register(thing)

    return register_architectures


def error_of(*extra) -> str:
    """The PluginError that loading the built-ins plus ``extra`` (and running their hooks) raises: one line."""
    with pytest.raises(PluginError) as err, plugins.extra_plugins(*extra):
        plugins.list_plugins()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_in_process_plugin_registers_beside_the_builtins():
    def register_compile_backends(register):
        register(DemoBackend())

    demo = plugin(
        "demo",
        register_architectures=registering(DemoArchitecture()),
        register_compile_backends=register_compile_backends,
    )
    with plugins.extra_plugins(demo):
        assert {"demo_moe", "mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"} <= set(plugins.get_architectures())
        assert set(plugins.get_compile_backends()) == {"qaic-compile", "demo-compile"}
        assert "demo_moe" in tiny_configs()  # the tests' architecture list comes from the registry
        listed = {p["name"]: p for p in plugins.list_plugins()}
    assert listed["demo"] == {
        "name": "demo",
        "distribution": None,
        "version": None,
        "hooks": ["register_architectures", "register_compile_backends"],
        "architectures": ["demo_moe"],
        "compile_backends": ["demo-compile"],
    }
    mixtral = listed["optimum_qaic_moe.architectures.mixtral"]
    assert mixtral["distribution"] == "optimum-qaic-moe" and mixtral["architectures"] == ["mixtral"]
    assert "demo_moe" not in plugins.get_architectures()  # gone after the block


def test_misspelled_hook_fails_when_plugins_load():
    typo = plugin("typo", register_architecture=registering(DemoArchitecture()))
    message = error_of(typo)
    assert message.startswith("plugin 'typo' implements register_architecture (did you mean register_architectures?)")
    assert "register_compile_backends" in message and plugins.DISABLE_ENV in message


@pytest.mark.parametrize("args", [["--list-plugins"], ["--model", "MODEL", "OUT"]], ids=["list-plugins", "export"])
def test_misspelled_hook_is_one_line_through_the_cli(tiny_dirs, tmp_path, monkeypatch, capsys, args):
    """optimum-cli's own main() in this process (the test plugin exists only here), argv as a user types it."""
    from optimum.commands.optimum_cli import main

    argv = [{"MODEL": tiny_dirs["qwen3_moe"], "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    monkeypatch.setattr(sys, "argv", ["optimum-cli", "export", "qaic", *argv])
    typo = plugin("typo", register_compile_backend=lambda register: None)
    with plugins.extra_plugins(typo), pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: plugin 'typo' implements register_compile_backend ")
    assert not (tmp_path / "out").exists()


def test_hook_argument_the_spec_lacks():
    def register_architectures(regsiter):
        pass

    message = error_of(plugin("misnamed", register_architectures=register_architectures))
    assert message.startswith("plugin 'misnamed' cannot be registered:") and "regsiter" in message


def test_two_plugins_registering_one_model_type():
    message = error_of(plugin("copycat", register_architectures=registering(MixtralArchitecture())))
    version = metadata.version("optimum-qaic-moe")
    assert message == (
        f"plugin 'optimum_qaic_moe.architectures.mixtral' (optimum-qaic-moe {version}) and plugin "
        "'copycat' both register the architecture 'mixtral': uninstall one of them"
    )


def test_registered_objects_that_do_not_fit():
    message = error_of(plugin("notarch", register_architectures=registering(object())))
    assert "plugin 'notarch' registers <object object" in message and "Architecture subclass" in message

    class Nameless(MixtralArchitecture):
        model_type = ""

    assert "without a model_type" in error_of(plugin("nameless", register_architectures=registering(Nameless())))

    class Partial:
        name = "partial"

        def find_compiler(self, explicit):
            return None

    def register_compile_backends(register):
        register(Partial())

    message = error_of(plugin("partial", register_compile_backends=register_compile_backends))
    assert "without search_description, commands, compile (see CompileBackend in hookspecs.py)" in message


def test_plugin_that_fails_to_import_names_its_distribution(tmp_path, monkeypatch):
    """A real installed distribution (a .dist-info on sys.path, as pip leaves it) whose module cannot import."""
    info = tmp_path / "qaic_broken-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qaic-broken\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[optimum_qaic_moe]\nbroken = qaic_broken\n")
    (tmp_path / "qaic_broken.py").write_text("import a_module_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        plugins.new_plugin_manager()
    assert str(err.value).startswith(
        "plugin 'broken' (qaic-broken 0.3) failed to import (qaic_broken): "
        "ModuleNotFoundError: No module named 'a_module_that_is_not_installed'; "
    )
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    assert "broken" not in dict(plugins.new_plugin_manager().list_name_plugin())


def _backend_calls(path: str) -> set:
    """Attribute names used on a compile backend (``backend.x`` / ``resolved.backend.x``) in one source file."""
    with open(path) as f:
        tree = ast.parse(f.read())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and (
            isinstance(node.value, ast.Name)
            and node.value.id == "backend"
            or isinstance(node.value, ast.Attribute)
            and node.value.attr == "backend"
        )
    }


def test_compile_backend_protocol_is_what_the_compile_step_calls():
    """The Protocol lists exactly what compiler/ calls on a backend (plus ``name``, the registry's key), and the
    built-in backend keeps it."""
    used = _backend_calls(compiler_package.__file__)
    assert used | {"name"} == set(plugins.BACKEND_MEMBERS) | set(hookspecs.OPTIONAL_BACKEND_MEMBERS)
    assert isinstance(QAICCompileBackend(), CompileBackend)
    assert not isinstance(object(), CompileBackend)


def test_hookspecs_and_plugins_import_no_heavy_module():
    code = (
        "import sys, optimum_qaic_moe.hookspecs, optimum_qaic_moe.plugins; "
        "print(sorted(m for m in ('torch', 'onnx', 'transformers', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert plugins.HOOKS == ("register_architectures", "register_compile_backends")
    assert all(hasattr(hookspecs, hook) for hook in plugins.HOOKS)
