"""Stand-ins for the proprietary QAIC platform SDK, which cannot be installed on our machines (test-only code).

``qaicrt`` and ``QAicApi_pb2`` stand in for the SDK's Python runtime, ``qaic_compile`` for ``qaic-compile`` and
``qaic_util`` for ``qaic-util``; each module says what it models. ``install_tool`` writes one of the executables
into a directory (it runs with this interpreter); ``sdk_importable`` puts this directory on ``sys.path`` so that
``import qaicrt`` finds the stand-in.
"""

import importlib
import os
import stat
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = {"qaic-compile": "qaic_compile", "qaic-exec": "qaic_compile", "qaic-util": "qaic_util"}


def install_tool(bin_dir, name: str = "qaic-compile") -> str:
    """Write an executable stand-in ``name`` (qaic-compile, qaic-exec or qaic-util) into bin_dir."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(str(bin_dir), name)
    with open(path, "w") as f:
        f.write(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {HERE!r})\n"
            f"from {TOOLS[name]} import main\nsys.exit(main(sys.argv))\n"
        )
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


def sdk_importable(monkeypatch):
    """Make ``import qaicrt`` / ``import QAicApi_pb2`` find fresh stand-ins (no traffic counted, no program
    active) for the rest of one test; afterwards they are gone again. Returns the stand-in ``qaicrt``."""
    monkeypatch.syspath_prepend(HERE)
    for name in ("QAicApi_pb2", "qaicrt"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        module = importlib.import_module(name)
        del sys.modules[name]  # so that monkeypatch records it as absent, and removes it afterwards
        monkeypatch.setitem(sys.modules, name, module)
    return sys.modules["qaicrt"]
