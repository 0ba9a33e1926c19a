"""Progress output that follows transformers' verbosity: stage lines and progress bars.

    from optimum_qaic_moe.logging import info, progress, stage, warning

    with stage("export prefill graph"):           # "[qaic] export prefill graph ..." then "...: done in 3.1 s"
        for chunk in progress(chunks, desc="verify"):
            ...

Lines are records of the ``optimum_qaic_moe`` logger, printed to stderr as ``[qaic] ...``; stage lines are INFO,
problems the user should see are WARNING. The level is transformers' (``transformers.logging.set_verbosity_*``,
``TRANSFORMERS_VERBOSITY``): in Python the default is WARNING, so an export is quiet unless asked
(``set_verbosity_info()``). ``optimum-cli export qaic`` shows INFO unless ``TRANSFORMERS_VERBOSITY`` says
otherwise, as ``optimum-cli export onnx`` does. Progress bars (tqdm) show at INFO and below, on a terminal,
unless transformers' progress bars are disabled (``disable_progress_bar()``, ``HF_HUB_DISABLE_PROGRESS_BARS=1``).
"""

from __future__ import annotations

import logging as _logging
import os
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager

LOGGER_NAME = "optimum_qaic_moe"
PREFIX = "[qaic] "
_LEVELS = {
    "debug": _logging.DEBUG,
    "info": _logging.INFO,
    "warning": _logging.WARNING,
    "error": _logging.ERROR,
    "critical": _logging.CRITICAL,
}

_cli_level: int | None = None  # set by the CLI; None: follow transformers' verbosity


class _Handler(_logging.Handler):
    """Writes to the current ``sys.stderr`` (test runners and notebooks replace it) through ``tqdm.write``, so
    a line printed while a progress bar is shown does not break the bar."""

    def emit(self, record: _logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging's own contract: a handler never raises
            self.handleError(record)


def verbosity() -> int:
    if _cli_level is not None:
        return _cli_level
    from transformers.utils import logging as hf_logging

    return hf_logging.get_verbosity()


def use_cli_verbosity() -> None:
    """For ``optimum-cli``: INFO, unless ``TRANSFORMERS_VERBOSITY`` names a level. Above INFO, transformers' and
    huggingface_hub's own progress bars (loading weights, downloads) are silenced too."""
    global _cli_level
    _cli_level = _LEVELS.get(os.environ.get("TRANSFORMERS_VERBOSITY", "").lower(), _logging.INFO)
    if _cli_level > _logging.INFO:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def get_logger() -> _logging.Logger:
    logger = _logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _Handler()
        handler.setFormatter(_logging.Formatter(PREFIX + "%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # as transformers' own logger: one handler prints it
    logger.setLevel(verbosity())  # read each time: the user may change transformers' verbosity at any moment
    return logger


def info(message: str) -> None:
    # Compile-backend plugins written for the earlier ``say`` callback prefix their lines themselves.
    get_logger().info(message.removeprefix(PREFIX))


def warning(message: str) -> None:
    get_logger().warning(message)


def size(nbytes: int) -> str:
    """``1.50 GiB``, ``12.3 MiB``: a byte count as people read it in a log line."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


@contextmanager
def stage(name: str):
    """``name ...`` when the step starts and ``name: done in T s`` when it ends, at INFO."""
    t0 = time.perf_counter()
    info(f"{name} ...")
    yield
    info(f"{name}: done in {time.perf_counter() - t0:.1f} s")


def progress_enabled() -> bool:
    if verbosity() > _logging.INFO:
        return False
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "step"):
    """A tqdm bar over ``iterable`` (or ``total`` steps, advanced with ``.update()``), shown only when
    ``progress_enabled()`` and stderr is a terminal (tqdm's ``disable=None``)."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=f"{PREFIX}{desc}",
        unit=unit,
        file=sys.stderr,
        leave=False,
        disable=None if progress_enabled() else True,
    )


class Steps:
    """A bar over named steps of one long operation, fed by a ``progress(step_name)`` callback that is called as
    each step starts (``exporters.onnx_export.export_onnx`` reports trace, save, check that way)."""

    def __init__(self, total: int, desc: str):
        self.desc = desc
        self.bar = progress(total=total, desc=desc)
        self.started = 0

    def __call__(self, step: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started += 1
        self.bar.set_postfix_str(step)
        info(f"  {self.desc}: {step}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()
