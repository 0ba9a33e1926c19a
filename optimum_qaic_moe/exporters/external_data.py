"""One external-data file holding every weight once, shared by the prefill and decode graphs.

The traced graphs hold no weight data (they were traced on the meta device). ``lay_out`` places every parameter of
the graph modules in one file (each tensor aligned to a page, so onnxruntime can map it); ``write`` fills it
through a memory map straight from the weight source, one block of rows at a time; ``point_graphs`` then points
each traced graph's initializers at their region (ONNX external data: location, offset, length). The layout
comes from the modules, not from the traced graphs, so the write can run while the graphs are traced
(``write_in_background``): the write of a large model is bound by the disk (buffered writes ran at ~320 MiB/s on
the machines we measured), tracing by one core.

ONNX refuses a location outside the model's directory and a data file with several hard links, so the graphs sit
next to the file: ``prefill.onnx``, ``decode.onnx`` and ``weights.data`` in the export's root.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import sys
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
            fs = os.statvfs(export_dir)
            free = fs.f_bavail * fs.f_frsize
            raise OSError(
                e.errno,
                f"{e.strerror}: {DATA_NAME} needs {size(weights.size)}, {size(free)} free",
                path,
            ) from e
    return path


def write(export_dir: str, weights: WeightsFile, writer, progress: Callable[[int], None] | None = None) -> None:
    """Fill ``export_dir/weights.data`` with every weight through ``writer`` (a ``tensors.WeightWriter``).
    ``progress(bytes written so far)`` is called after each tensor."""
    path = reserve(export_dir, weights)
    done = 0
    for name, (offset, shape) in weights.layout.items():
        if _nbytes(shape) == 0:
            continue
        # No flush: the pages stay in the page cache after unmapping and the kernel writes them back while the
        # next tensors are converted (a synchronous msync per tensor cost ~1.5 s per GiB).
        out = np.memmap(path, dtype=np.float32, mode="r+", offset=offset, shape=shape)
        writer.write(weights.params[name], out)
        del out
        done += _nbytes(shape)
        if progress:
            progress(done)


# Where fork() is safe to use here (Linux); elsewhere the weights are written before the tracing, not alongside.
FORK = sys.platform.startswith("linux")


class BackgroundWrite:
    """``write`` in a forked child process while the parent goes on; ``wait`` returns when it is done and raises
    what it raised.

    A process, not a thread: the child shares the model's recipes and the checkpoint's mappings with the parent
    through fork (nothing is copied or pickled), and does not share its GIL. On the 2-layer 30B-shaped model
    (6.96 GiB), tracing both graphs and writing took 39.6 s one after the other, 26.2 s with the write on a
    thread (the two fight over the GIL: the tracing ran 1.4x slower and the write too), 18.5 s with the write in a
    child (the write ended before the tracing did)."""

    def __init__(self, export_dir: str, weights: WeightsFile, writer):
        self.done = 0
        self._progress_r, progress_w = os.pipe()
        self._error_r, error_w = os.pipe()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:  # no memory or process slot for a child (a strict overcommit policy, a pid limit)
            for fd in (self._progress_r, progress_w, self._error_r, error_w):
                os.close(fd)
            raise
        if pid == 0:  # the child: write, report, and leave without running any of the parent's exit handlers
            os.close(self._progress_r)
            os.close(self._error_r)
            _write_in_child(parent, export_dir, weights, writer, progress_w, error_w)
        self.pid: int | None = pid
        os.close(progress_w)
        os.close(error_w)
        os.set_blocking(self._progress_r, False)
        self._error = b""

    def _drain(self) -> None:
        """Take the byte counts the child has sent so far; keep the latest."""
        while True:
            try:
                chunk = os.read(self._progress_r, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            whole = len(chunk) // 8 * 8
            if whole:
                self.done = struct.unpack("<Q", chunk[whole - 8 : whole])[0]

    def wait(self, progress: Callable[[int], None] | None = None) -> None:
        """Block until the child ends; ``progress(bytes written so far)`` about twice a second meanwhile."""
        while self.pid is not None:
            select.select([self._progress_r, self._error_r], [], [], 0.5)
            self._drain()
            self._read_error()
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = None
                self._finish(status)
            elif progress:
                progress(self.done)

    def _read_error(self) -> None:
        while select.select([self._error_r], [], [], 0)[0]:
            chunk = os.read(self._error_r, 1 << 16)
            if not chunk:
                break
            self._error += chunk

    def _finish(self, status: int) -> None:
        self._drain()
        self._read_error()
        os.close(self._progress_r)
        os.close(self._error_r)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return
        if self._error:
            raise pickle.loads(self._error)
        raise RuntimeError(f"the process writing {DATA_NAME} died ({_death(code)})")

    def stop(self) -> None:
        """Kill the child and reap it (the export failed elsewhere); nothing writes into the directory after."""
        if self.pid is None:
            return
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.pid = None
        os.close(self._progress_r)
        os.close(self._error_r)


def _death(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _write_in_child(parent: int, export_dir: str, weights: WeightsFile, writer, progress_w: int, error_w: int):
    code = 1
    try:
        _die_with(parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills this process
        import torch

        torch.set_num_threads(1)  # see _one_thread
        os.set_blocking(progress_w, False)

        def report(done: int) -> None:
            try:
                os.write(progress_w, struct.pack("<Q", done))
            except BlockingIOError:
                pass  # the parent is busy; the next count supersedes this one

        write(export_dir, weights, writer, progress=report)
        code = 0
    except BaseException as e:
        try:
            payload = pickle.dumps(e)
        except Exception:  # an exception that does not pickle: its text is what the user needs
            payload = pickle.dumps(RuntimeError(f"{type(e).__name__}: {e}"))
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(error_w, view) :]
        except OSError:
            pass
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    """Have the kernel kill this process if the parent dies (SIGKILL leaves it no chance to stop the child)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


@contextmanager
def write_in_background(export_dir: str, weights: WeightsFile, writer) -> Iterator[BackgroundWrite | None]:
    """Write the weights while the body runs (it must call ``wait()`` on what it gets, before using the file).
    On any exception in the body, the writing process is killed, and reaped, before the exception goes on: nothing
    keeps writing into a directory the caller is about to discard. Where fork is not available (``FORK``) or
    fails, the weights are written first and the body gets None."""
    reserve(export_dir, weights)  # here, so a full disk stops the export before the tracing, not after
    job = None
    if FORK:
        try:
            job = BackgroundWrite(export_dir, weights, writer)
        except OSError as e:
            from ..logging import info

            info(f"could not start a process to write the weights ({e.strerror or e}): writing them first")
    if job is None:
        with _one_thread():
            write(export_dir, weights, writer)
        yield None
        return
    try:
        yield job
    except BaseException:
        job.stop()
        raise
    if job.pid is not None:
        job.stop()
        raise RuntimeError("write_in_background: the body did not wait() for the weights")


def point_graphs(graphs, modules: Iterable[nn.Module], weights: WeightsFile) -> None:
    """Make each traced graph's weight initializers (TracedGraph.params) external data in ``weights.data``;
    ``modules``: the graph modules they were traced from, in the same order, as given to ``lay_out``."""
    import onnx_ir as ir

    for traced, module in zip(graphs, modules, strict=True):
        laid_out = dict(module.named_parameters(remove_duplicate=False))
        for name, param in traced.params.items():
            if laid_out.get(name) is not param:  # lay_out placed every parameter of the module
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
