"""One external-data file holding every weight once, shared by the prefill and decode graphs.

The traced graphs hold no weight data (they were traced on the meta device). ``write_weights`` lays out every
initializer of every graph in one file (each tensor aligned to a page, so onnxruntime can map it), fills it through
a memory map straight from the weight source, one block of rows at a time, then points each graph's initializers
at their region (ONNX external data: location, offset, length). ONNX refuses a location outside the model's
directory and a data file with several hard links, so the graphs sit next to the file: ``prefill.onnx``,
``decode.onnx`` and ``weights.data`` in the export's root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DATA_NAME = "weights.data"
ALIGN = 4096


def _layout(graphs) -> tuple[dict[str, tuple[int, tuple]], int]:
    """{initializer name: (offset, shape)} over the union of the graphs' parameters, and the file size."""
    layout: dict[str, tuple[int, tuple]] = {}
    offset = 0
    for traced in graphs:
        for name, param in traced.params.items():
            shape = tuple(param.shape)
            if name in layout:
                if layout[name][1] != shape:
                    raise ValueError(f"{name} has shape {shape} in one graph and {layout[name][1]} in another")
                continue
            layout[name] = (offset, shape)
            nbytes = int(np.prod(shape, dtype=np.int64)) * 4
            offset += -(-nbytes // ALIGN) * ALIGN
    return layout, offset


def write_weights(export_dir: str, graphs, writer, progress: Callable[[int, int], None] | None = None) -> int:
    """Write the weights of ``graphs`` (TracedGraph) into ``export_dir/weights.data`` and point the graphs at it.
    Returns the file's size in bytes."""
    import onnx_ir as ir

    layout, size = _layout(graphs)
    first = os.path.join(export_dir, DATA_NAME)
    with open(first, "wb") as f:
        f.truncate(size)
    params: dict[str, torch.Tensor] = {}
    for traced in graphs:
        for name, param in traced.params.items():
            params.setdefault(name, param)
    done = 0
    with _one_thread():
        for name, (offset, shape) in layout.items():
            if int(np.prod(shape, dtype=np.int64)) == 0:
                continue
            # No flush: the pages stay in the page cache after unmapping and the kernel writes them back while the
            # next tensors are converted (a synchronous msync per tensor cost ~1.5 s per GiB).
            out = np.memmap(first, dtype=np.float32, mode="r+", offset=offset, shape=shape)
            writer.write(params[name], out)
            del out
            done += int(np.prod(shape, dtype=np.int64)) * 4
            if progress:
                progress(done, size)
    for traced in graphs:
        for name, value in traced.model.graph.initializers.items():
            if name in layout:
                offset, shape = layout[name]
                value.const_value = ir.ExternalTensor(
                    DATA_NAME,
                    offset,
                    int(np.prod(shape, dtype=np.int64)) * 4,
                    ir.DataType.FLOAT,
                    shape=ir.Shape(list(shape)),
                    name=name,
                )
    return size


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
