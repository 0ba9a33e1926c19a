"""One compiled program (``qpc/``) on Cloud AI 100 cards, through the platform SDK's Python runtime ``qaicrt``.

``QAICSession`` follows the runtime's documented use (the same calls as QEfficient's ``QAICInferenceSession``):
one buffer per I/O binding, named by the program's I/O descriptor; a binding given an empty buffer is skipped,
which for the KV cache (``past_*`` inputs, ``*_RetainedState`` outputs of a ``-retained-state`` program) means
the cache stays on the card between calls. Shapes and dtypes come from the descriptor, i.e. from what the card
actually runs, never from our json files.

The SDK is proprietary and cannot be installed on our machines: the tests run this module against a stand-in
``qaicrt`` (tests/standins/) backed by onnxruntime. No real card has run it.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from ..settings import UserError

SDK_PATHS = (f"/opt/qti-aic/dev/lib/{platform.machine()}", "/opt/qti-aic/dev/python")
DEFAULT_DATA_PATH_TIMEOUT_MS = 60_000


def load_sdk():
    """(qaicrt, QAicApi_pb2) from the installed SDK, or one clear error."""
    for extra in SDK_PATHS:
        if os.path.isdir(extra) and extra not in sys.path:
            sys.path.append(extra)
    try:
        import QAicApi_pb2 as aicapi
        import qaicrt
    except ImportError as e:
        raise UserError(
            "device='qaic' needs the QAIC platform SDK's Python runtime (qaicrt, QAicApi_pb2), "
            "which is not importable here: install the SDK or use device='cpu'"
        ) from e
    return qaicrt, aicapi


def numpy_dtypes(aicapi) -> dict[int, np.dtype]:
    """Descriptor type -> host numpy dtype. bfloat16 has no numpy type: its 2-byte host buffers are handled as
    float16-sized (the runtime only checks element sizes); quantized types travel as their integer storage."""
    names = {
        "FLOAT_TYPE": np.float32,
        "FLOAT_16_TYPE": np.float16,
        "BFLOAT16_TYPE": np.float16,
        "INT8_Q_TYPE": np.int8,
        "UINT8_Q_TYPE": np.uint8,
        "INT16_Q_TYPE": np.int16,
        "INT32_Q_TYPE": np.int32,
        "INT32_I_TYPE": np.int32,
        "INT64_I_TYPE": np.int64,
        "INT8_TYPE": np.int8,
    }
    return {getattr(aicapi, name): np.dtype(dtype) for name, dtype in names.items() if hasattr(aicapi, name)}


def is_kv_name(name: str) -> bool:
    """A retained-state binding: a cache input ``past_*`` or its ``*_RetainedState`` output."""
    return name.startswith("past_")


class QAICSession:
    """A ``qaicrt`` program loaded and activated on one device or a device group.

    ``device_ids``: None lets the runtime pick a device; one id pins the program to it; several ids load a
    multi-device (``-mdp-load-partition-config``) program over them (a context over ``QIDList`` and the
    program's ``devMapping``). ``data_path_timeout_ms``: how long the host waits for the card per call.
    """

    def __init__(
        self,
        qpc_dir: str,
        device_ids: Sequence[int] | None = None,
        data_path_timeout_ms: int = DEFAULT_DATA_PATH_TIMEOUT_MS,
    ):
        rt, aicapi = load_sdk()
        if not os.path.isfile(os.path.join(qpc_dir, "programqpc.bin")):
            raise UserError(f"no compiled program in {qpc_dir}: compile first (bash compile.sh next to it)")
        self.rt, self.qpc_dir = rt, qpc_dir
        self.device_ids = list(device_ids) if device_ids else None
        ids = self.device_ids
        self.context = rt.Context(rt.QIDList(ids)) if ids else rt.Context()
        self.queue = rt.Queue(self.context, ids[0] if ids else 0)
        qpc = rt.Qpc(qpc_dir)
        status, raw = qpc.getIoDescriptor()
        self._check(status, "read the I/O descriptor of")
        iodesc = aicapi.IoDesc()
        iodesc.ParseFromString(bytes(raw))
        dtypes = numpy_dtypes(aicapi)
        self.bindings = list(iodesc.selected_set.bindings)
        self.index = {b.name: b.index for b in self.bindings}
        self.dtype = {b.name: dtypes[b.type] for b in self.bindings}
        self.input_names = [b.name for b in self.bindings if b.dir == aicapi.BUFFER_IO_TYPE_INPUT]
        self.output_names = [b.name for b in self.bindings if b.dir == aicapi.BUFFER_IO_TYPE_OUTPUT]
        # One {binding name: dims} per specialization the program was compiled for. The descriptor lists
        # allowed_shapes only when there are several; otherwise the selected set is the one shape.
        names = [b.name for b in self.bindings]
        self.specializations = [
            dict(zip(names, (list(s.dims) for s in allowed.shapes))) for allowed in iodesc.allowed_shapes
        ] or [{b.name: list(b.dims) for b in self.bindings}]

        properties = rt.QAicProgramProperties()
        properties.dataPathTimeoutMs = int(data_path_timeout_ms)
        if ids and len(ids) > 1:
            properties.devMapping = ":".join(map(str, ids))
        single = ids[0] if ids and len(ids) == 1 else None
        self.program = rt.Program(self.context, single, qpc, properties)
        self._check(self.program.load(), "load")
        self._check(self.program.activate(), "activate")
        self.exec = rt.ExecObj(self.context, self.program)
        self.buffers = [rt.QBuffer(bytes(b.size)) for b in self.bindings]
        self.dims = rt.BufferDimensionsVecRef([(self.dtype[b.name].itemsize, list(b.dims)) for b in self.bindings])

    def _check(self, status, what: str) -> None:
        if status != self.rt.QStatus.QS_SUCCESS:
            where = f" on devices {self.device_ids}" if self.device_ids else ""
            raise RuntimeError(f"qaicrt could not {what} {self.qpc_dir}{where} (status {status})")

    def set_buffers(self, arrays: dict[str, np.ndarray]) -> None:
        """Bind host arrays (inputs to send, or output placeholders to fill) for the next ``run``."""
        for name, array in arrays.items():
            i = self.index[name]
            array = np.ascontiguousarray(array, dtype=self.dtype[name])
            self.buffers[i] = self.rt.QBuffer(array.tobytes())
            self.dims[i] = (array.itemsize, list(array.shape) or [1])

    def skip_buffers(self, names: Iterable[str]) -> None:
        """Bind nothing: a skipped retained-state binding keeps its data on the card."""
        for name in names:
            i = self.index[name]
            self.buffers[i] = self.rt.QBuffer(b"")
            self.dims[i] = (self.dtype[name].itemsize, [0])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Bind ``inputs``, execute, return every output that has a host buffer bound (skipped ones stay)."""
        self.set_buffers(inputs)
        rt = self.rt
        if self.exec.setData(self.buffers, self.dims) != rt.QStatus.QS_SUCCESS:
            raise RuntimeError(f"qaicrt setData failed for {self.qpc_dir}")
        if (
            self.queue.enqueue(self.exec) != rt.QStatus.QS_SUCCESS
            or self.exec.waitForCompletion() != rt.QStatus.QS_SUCCESS
        ):
            passed = {b.name: list(d) for b, (_, d) in zip(self.bindings, self.dims) if list(d) != [0]}
            raise RuntimeError(
                f"qaicrt execution of {self.qpc_dir} failed; bound shapes {passed}, compiled "
                f"specializations {self.specializations}"
            )
        status, out = self.exec.getData()
        if status != rt.QStatus.QS_SUCCESS:
            raise RuntimeError(f"qaicrt getData failed for {self.qpc_dir}")
        result = {}
        for name in self.output_names:
            i = self.index[name]
            if self.buffers[i].size == 0:
                continue
            result[name] = np.frombuffer(bytes(out[i]), self.dtype[name]).reshape(self.dims[i][1])
        return result

    def close(self) -> None:
        """Deactivate the program (frees the card for another); the session cannot run afterwards."""
        if getattr(self, "exec", None) is not None:
            self.exec = None
            self.program.deactivate()

    def kv_input_names(self) -> list[str]:
        return [n for n in self.input_names if is_kv_name(n)]

    def kv_output_names(self) -> list[str]:
        return [n for n in self.output_names if is_kv_name(n)]
