"""One external-data file holding every weight once, shared by the prefill and decode graphs.

The traced graphs hold no weight data (they were traced on the meta device). ``lay_out`` places every parameter of
the graph modules in one file (each tensor aligned to a page, so onnxruntime can map it); ``write`` fills it
through a memory map straight from the weight source, one block of rows at a time; ``point_graphs`` then points
each traced graph's initializers at their region (ONNX external data: location, offset, length). The layout
comes from the modules, not from the traced graphs, so the write can run while the graphs are traced
(``write_in_background``): on this kind of machine the write of a large model is bound by the disk's writeback
(the kernel throttles a writer once a few GiB are dirty), and tracing is bound by one core.

ONNX refuses a location outside the model's directory and a data file with several hard links, so the graphs sit
next to the file: ``prefill.onnx``, ``decode.onnx`` and ``weights.data`` in the export's root.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

DATA_NAME = "weights.data"
ALIGN = 4096


def _nbytes(shape: tuple) -> int:
    return int(np.prod(shape, dtype=np.int64)) * 4


@dataclass
class WeightsFile:
    """Where each weight goes in ``weights.data``: {name: (offset, shape)}, the parameter it holds, the size."""

    layout: dict[str, tuple[int, tuple]]
    params: dict[str, torch.Tensor]
    size: int


def lay_out(modules: Iterable[nn.Module]) -> WeightsFile:
    """Every parameter of the graph modules, once by name: the modules of one export are built from the same
    transformers parameters, so a name holds the same values in each (computed ones, the RoPE tables, too)."""
    layout: dict[str, tuple[int, tuple]] = {}
    params: dict[str, torch.Tensor] = {}
    offset = 0
    for module in modules:
        for name, param in module.named_parameters(remove_duplicate=False):
            shape = tuple(param.shape)
            if name in layout:
                if layout[name][1] != shape:
                    raise ValueError(f"{name} has shape {shape} in one graph and {layout[name][1]} in another")
                continue
            layout[name], params[name] = (offset, shape), param
            offset += -(-_nbytes(shape) // ALIGN) * ALIGN
    return WeightsFile(layout, params, offset)


def reserve(export_dir: str, weights: WeightsFile) -> str:
    """Create ``weights.data`` with all its blocks allocated, so a disk that fills up fails here, with an OSError,
    and not later inside a write through the memory map, where the kernel kills the process with SIGBUS (leaving
    a staging directory behind). Returns its path; a second call on the same file does nothing new."""
    from ..logging import size

    path = os.path.join(export_dir, DATA_NAME)
    with open(path, "ab") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, max(weights.size, 1))
        except OSError as e:
            free = os.statvfs(export_dir).f_bavail * os.statvfs(export_dir).f_frsize
            raise OSError(
                e.errno,
                f"{e.strerror}: {DATA_NAME} needs {size(weights.size)}, {size(free)} free",
                path,
            ) from e
    return path


class Cancelled(Exception):
    """The write was stopped before it finished (the export failed or was interrupted elsewhere)."""


def write(
    export_dir: str,
    weights: WeightsFile,
    writer,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Fill ``export_dir/weights.data`` with every weight through ``writer`` (a ``tensors.WeightWriter``).
    ``progress(bytes)`` is called after each tensor; ``stop``, once set, ends the write at the next block."""
    path = reserve(export_dir, weights)

    def check_stop() -> None:
        if stop is not None and stop.is_set():
            raise Cancelled

    for name, (offset, shape) in weights.layout.items():
        if _nbytes(shape) == 0:
            continue
        # No flush: the pages stay in the page cache after unmapping and the kernel writes them back while the
        # next tensors are converted (a synchronous msync per tensor cost ~1.5 s per GiB).
        out = np.memmap(path, dtype=np.float32, mode="r+", offset=offset, shape=shape)
        writer.write(weights.params[name], out, between_blocks=check_stop)
        del out
        if progress:
            progress(_nbytes(shape))


class BackgroundWrite:
    """``write`` on a thread of its own; ``wait`` joins it and raises what it raised."""

    def __init__(self, export_dir: str, weights: WeightsFile, writer):
        self.size, self.done = weights.size, 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(export_dir, weights, writer), name="qaic-write-weights", daemon=True
        )

    def _run(self, export_dir: str, weights: WeightsFile, writer) -> None:
        try:
            write(export_dir, weights, writer, progress=self._advance, stop=self._stop)
        except BaseException as e:  # handed to the main thread by wait()
            self._error = e

    def _advance(self, nbytes: int) -> None:
        self.done += nbytes

    def wait(self, progress: Callable[[int], None] | None = None) -> None:
        """Block until the write ends; ``progress(bytes written so far)`` about twice a second meanwhile."""
        while self._thread.is_alive():
            self._thread.join(0.5)
            if progress:
                progress(self.done)
        if self._error is not None:
            raise self._error


@contextmanager
def write_in_background(export_dir: str, weights: WeightsFile, writer) -> Iterator[BackgroundWrite]:
    """Write the weights while the body runs (it must ``wait()`` before using the file). On any exception in the
    body the write is stopped, and the thread joined, before the exception goes on: nothing keeps writing into a
    directory the caller is about to discard. torch runs on one intra-op thread meanwhile (see ``_one_thread``);
    the tracing that runs alongside is single-threaded Python."""
    reserve(export_dir, weights)  # here, so a full disk stops the export before the tracing, not after
    switch = sys.getswitchinterval()
    # The writer needs the GIL for a moment between its copies, and at the default 5 ms switch interval it waits for
    # the tracing thread most of the time: measured on the 2-layer 30B-shaped export, 1.3 of 7 GiB written while
    # the graphs were traced (19 s) at 5 ms, 4.3 GiB at 0.5 ms, which costs the tracing about 1 s.
    sys.setswitchinterval(min(switch, 0.0005))
    try:
        with _one_thread():
            job = BackgroundWrite(export_dir, weights, writer)
            job._thread.start()
            try:
                yield job
            except BaseException:
                job._stop.set()
                job._thread.join()
                raise
            job.wait()
    finally:
        sys.setswitchinterval(switch)


def point_graphs(graphs, modules: Iterable[nn.Module], weights: WeightsFile) -> None:
    """Make each traced graph's weight initializers (TracedGraph.params) external data in ``weights.data``;
    ``modules``: the graph modules they were traced from, in the same order, as given to ``lay_out``."""
    import onnx_ir as ir

    for traced, module in zip(graphs, modules, strict=True):
        laid_out = dict(module.named_parameters(remove_duplicate=False))
        for name, param in traced.params.items():
            if laid_out.get(name) is not param or name not in weights.layout:
                raise ValueError(f"the traced graph's weight {name} is not the graph module's parameter of that name")
        for name, value in traced.model.graph.initializers.items():
            if name in traced.params:
                offset, shape = weights.layout[name]
                value.const_value = ir.ExternalTensor(
                    DATA_NAME, offset, _nbytes(shape), ir.DataType.FLOAT, shape=ir.Shape(list(shape)), name=name
                )


@contextmanager
def _one_thread():
    """torch on one intra-op thread: the writes are thousands of small memory-bound copies (one expert each), and
    on a busy machine every parallel copy waits for a descheduled second thread (measured with the load at 3.5 on
    2 cores: 1 GiB in 5 s on one thread, 16-27 s on two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def save_graph(model, path: str) -> None:
    """Serialize a graph whose initializers are external (or small) without touching the data file."""
    import onnx
    import onnx_ir as ir

    onnx.save_model(ir.serde.serialize_model(model), path)
