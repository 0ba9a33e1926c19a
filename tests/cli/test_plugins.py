"""Plugins: the built-ins come through the hooks, and a real third-party distribution with an entry point is
found by `optimum-cli export qaic` and listed by its --list-plugins. (The contract's failure modes, with plugins
registered in-process: test_plugin_contract.py.)"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import optimum_cli, read_json

from optimum_qaic_moe import plugins

PLUGIN_SETUP = """
from setuptools import setup
setup(name="qaic-demo-plugin", version="0.1", py_modules=["qaic_demo_plugin"],
      entry_points={"optimum_qaic_moe": ["demo = qaic_demo_plugin"]})
"""
PLUGIN_MODULE = """
import os
import sys
from optimum_qaic_moe.architectures.qwen3_moe import Qwen3MoeArchitecture
from optimum_qaic_moe.plugins import hookimpl


class DemoArchitecture(Qwen3MoeArchitecture):
    model_type = "demo_moe"


@hookimpl
def register_architectures(register):
    print("demo plugin: register_architectures called", file=sys.stderr)
    register(DemoArchitecture())


class DemoBackend:
    name = "demo-backend"

    def search_description(self):
        return "the demo backend needs no compiler"

    def find_compiler(self, explicit):
        return sys.executable

    def commands(self, output_dir, settings, compiler):
        return [(graph, [compiler, "-c", "pass"]) for graph in settings.graphs]

    def compile(self, output_dir, graph, argv, say):
        with open(os.path.join(output_dir, graph, "demo-compiled.txt"), "w") as f:
            f.write(" ".join(argv[1:]))
        say(f"demo-backend compiled {graph}")


@hookimpl
def register_compile_backends(register):
    register(DemoBackend())
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """Build and pip-install a real plugin distribution into a private directory (kept off the test venv)."""
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "setup.py").write_text(PLUGIN_SETUP)
    (src / "qaic_demo_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    target = tmp_path_factory.mktemp("plugin_site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return str(target)


def test_builtins_register_through_the_hooks():
    builtins = {"qwen3_moe", "gpt_oss", "mixtral", "qwen2_moe"}
    assert builtins <= set(plugins.get_architectures())
    assert builtins <= set(plugins.get_export_configs())
    assert "qaic-compile" in plugins.get_compile_backends()
    names = {name for name, _ in plugins.get_plugin_manager().list_name_plugin()}
    assert set(plugins.builtin_plugins()) <= names


def test_export_configs_reach_optimum_tasks_manager():
    from optimum.exporters.tasks import TasksManager

    plugins.get_export_configs()
    for model_type in ("qwen3_moe", "gpt_oss", "mixtral", "qwen2_moe"):
        tasks = TasksManager.get_supported_tasks_for_model_type(
            model_type, exporter="qaic", library_name="transformers"
        )
        assert "text-generation-with-past" in tasks


def _env(plugin_path):
    # No trailing separator: an empty PYTHONPATH entry would put the working directory (this source tree, with
    # its own optimum/commands/register) on the path too, and optimum-cli would register `qaic` twice.
    return {"PYTHONPATH": os.pathsep.join(p for p in (plugin_path, os.environ.get("PYTHONPATH")) if p)}


@pytest.mark.slow  # pip-installs a distribution, then two optimum-cli processes
def test_third_party_plugin_hook_is_called_by_the_cli(tmp_path, plugin_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    env = _env(plugin_path)
    proc = optimum_cli("export", "qaic", "--model", model, tmp_path / "out", env=env)
    assert "demo plugin: register_architectures called" in proc.stderr
    assert "demo_moe" in proc.stderr.splitlines()[-1]  # the plugin's architecture is offered

    env[plugins.DISABLE_ENV] = "1"
    proc = optimum_cli("export", "qaic", "--model", model, tmp_path / "out", env=env)
    assert "demo plugin" not in proc.stderr
    assert "demo_moe" not in proc.stderr


@pytest.mark.slow
def test_cli_compiles_with_a_backend_registered_by_a_plugin(tmp_path, tiny_dirs, plugin_path):
    env = _env(plugin_path)
    out = tmp_path / "out"
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        tiny_dirs["qwen3_moe"],
        "--prefill-seq-len",
        4,
        "--ctx-len",
        16,
        "--num-cores",
        2,
        "--decode-only",
        "--no-verify",
        "--compile",
        "always",
        "--compile-backend",
        "demo-backend",
        out,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "decode" / "demo-compiled.txt").read_text() == "-c pass"
    assert "[qaic] demo-backend compiled decode" in proc.stderr
    assert read_json(out / "qaic_config.json")["settings"]["compile_backend"] == "demo-backend"


@pytest.mark.slow  # an optimum-cli process
def test_list_plugins_shows_each_plugin_with_its_distribution(plugin_path):
    proc = optimum_cli("export", "qaic", "--list-plugins", env=_env(plugin_path))
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [p["name"] for p in listed] == [*plugins.builtin_plugins(), "demo"]  # built-ins first
    assert listed[-1] == {
        "name": "demo",
        "distribution": "qaic-demo-plugin",
        "version": "0.1",
        "hooks": ["register_architectures", "register_compile_backends"],
        "architectures": ["demo_moe"],
        "compile_backends": ["demo-backend"],
    }
    assert {p["distribution"] for p in listed[:-1]} == {"optimum-qaic-moe"}
    assert sorted(a for p in listed for a in p.get("architectures", [])) == [
        "demo_moe",
        "gpt_oss",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
    ]
    assert [b for p in listed for b in p.get("compile_backends", [])] == ["qaic-compile", "demo-backend"]
