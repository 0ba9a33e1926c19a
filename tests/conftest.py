import json
import os
import subprocess
import sys

import pytest

from optimum_qaic_moe.testing import tiny_configs, write_tiny_checkpoint

ARCHS = tuple(tiny_configs())  # every registered architecture with a tiny config
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """{model_type: path of a tiny random checkpoint}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: write_tiny_checkpoint(arch, str(root / arch)) for arch in ARCHS}


def optimum_cli(*args, env=None, check=False, timeout=600):
    """Run the real `optimum-cli` of this environment in a subprocess."""
    exe = os.path.join(BIN, "optimum-cli")
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"optimum-cli {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def exports(tmp_path_factory, tiny_dirs):
    """One CLI export per architecture, shared by the tests that only read it. 4 cores for 6 experts, chunk 5 for
    prefill 8: neither divides. Two context lengths, 32 and 64: one graph, two specializations."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for arch, model in tiny_dirs.items():
        proc = optimum_cli(
            "export",
            "qaic",
            "--model",
            model,
            "--prefill-seq-len",
            8,
            "--ctx-len",
            "32,64",
            "--num-cores",
            4,
            "--moe-prefill-packed-chunk-size",
            5,
            root / arch,
            check=True,
        )
        out[arch] = (str(root / arch), proc)
    return out


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{format key: directory} of tiny checkpoints in every on-disk format (tests/checkpoints), written once per
    session (each in well under a second)."""
    from checkpoint_helpers import FORMATS  # tests/checkpoints, on the path when its tests are collected

    from optimum_qaic_moe.testing import write_checkpoint

    root = tmp_path_factory.mktemp("formats")
    return {key: write_checkpoint(mt, str(root / key), format=fmt, **kw) for key, (mt, fmt, kw) in FORMATS.items()}


def pytest_collection_modifyitems(items):
    """A test that reads the shared CLI exports (four full exports, about a minute and a half together) belongs to
    the slow tier, whatever its own cost: the fast tier (`pytest -m "not slow"`) must not pay for them."""
    for item in items:
        if "exports" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
