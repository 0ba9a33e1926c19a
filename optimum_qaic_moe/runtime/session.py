"""Run exported QAIC causal-LM graphs: chunked prefill and decode with the KV cache kept as retained state.

The graph-running backend is pluggable: ``OrtGraph`` (onnxruntime, the CPU reference, always available) or
``QAICGraph`` (the QAIC SDK's Python runtime, when importable). Both take and return numpy arrays by name.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from ..settings import UserError


class OrtGraph:
    def __init__(self, onnx_path: str, optimize: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not optimize:  # no constant folding or weight pre-packing: about one copy of the weights, not two
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds)))


class QAICGraph:
    """A compiled program (``qpc/``) on a Cloud AI 100 card, through the platform SDK's ``qaicrt`` runtime.

    Written against the SDK's documented Python interface; the SDK is proprietary and absent on our machines, so
    this path has not been run here. The KV cache goes through the host (past_* in, *_RetainedState out), as
    with onnxruntime: prefill and decode are separate programs, and host copies are what hands the cache from
    one to the other. Keeping it on the card (one program with both specializations, or the SDK's DMA handoff)
    is future work.
    """

    def __init__(self, qpc_dir: str, device_id: int = 0):
        import platform
        import sys

        for extra in (f"/opt/qti-aic/dev/lib/{platform.machine()}", "/opt/qti-aic/dev/python"):
            if os.path.isdir(extra) and extra not in sys.path:
                sys.path.append(extra)
        try:
            import qaicrt
            import QAicApi_pb2 as aicapi
        except ImportError as e:
            raise UserError("device='qaic' needs the QAIC platform SDK's Python runtime (qaicrt, QAicApi_pb2), "
                            "which is not importable here: install the SDK or use device='cpu'") from e
        if not os.path.isfile(os.path.join(qpc_dir, "programqpc.bin")):
            raise UserError(f"no compiled program in {qpc_dir}: compile first (bash compile.sh next to it)")
        self.rt, ok = qaicrt, qaicrt.QStatus.QS_SUCCESS
        self.context = qaicrt.Context()
        self.queue = qaicrt.Queue(self.context, device_id)
        qpc = qaicrt.Qpc(qpc_dir)
        status, raw = qpc.getIoDescriptor()
        if status != ok:
            raise RuntimeError(f"qaicrt could not read the I/O descriptor of {qpc_dir}")
        iodesc = aicapi.IoDesc()
        iodesc.ParseFromString(bytes(raw))
        dtypes = {aicapi.FLOAT_TYPE: np.float32, aicapi.FLOAT_16_TYPE: np.float16, aicapi.INT64_I_TYPE: np.int64,
                  aicapi.INT32_I_TYPE: np.int32, aicapi.INT8_Q_TYPE: np.int8, aicapi.UINT8_Q_TYPE: np.uint8}
        self.bindings = list(iodesc.selected_set.bindings)
        self.dtype = {b.name: np.dtype(dtypes[b.type]) for b in self.bindings}
        self.index = {b.name: b.index for b in self.bindings}
        self.output_names = [b.name for b in self.bindings if b.dir == aicapi.BUFFER_IO_TYPE_OUTPUT]
        self.program = qaicrt.Program(self.context, device_id, qpc, qaicrt.QAicProgramProperties())
        if self.program.load() != ok or self.program.activate() != ok:
            raise RuntimeError(f"qaicrt could not load and activate {qpc_dir} on device {device_id}")
        self.exec = qaicrt.ExecObj(self.context, self.program)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        rt, ok = self.rt, self.rt.QStatus.QS_SUCCESS
        buffers, dims = [], []
        for b in self.bindings:
            array = feeds.get(b.name)
            if array is None:  # outputs: the runtime allocates them at the compiled shape
                array = np.zeros(tuple(b.dims), dtype=self.dtype[b.name])
            array = np.ascontiguousarray(array, dtype=self.dtype[b.name])
            buffers.append(rt.QBuffer(array.tobytes()))
            dims.append((array.itemsize, list(array.shape)))
        if self.exec.setData(buffers, rt.BufferDimensionsVecRef(dims)) != ok:
            raise RuntimeError("qaicrt setData failed")
        if self.queue.enqueue(self.exec) != ok or self.exec.waitForCompletion() != ok:
            raise RuntimeError("qaicrt execution failed (do the input shapes match the compiled specialization?)")
        status, out = self.exec.getData()
        if status != ok:
            raise RuntimeError("qaicrt getData failed")
        result = {}
        for name in self.output_names:  # fp16 / mxint8 KV comes back as fp16: the host cache keeps fp32
            i = self.index[name]
            result[name] = np.frombuffer(bytes(out[i]), self.dtype[name]).reshape(dims[i][1]).astype(np.float32)
        return result


def cache_shapes(onnx_path: str, batch_size: int, ctx_len: int, window: Optional[int]) -> Dict[str, tuple]:
    """The KV cache inputs' shapes of a graph, its symbolic dims bound for one batch size and context length."""
    import onnx

    bind = {"batch_size": batch_size, "ctx_len": ctx_len, "sliding_window": min(window or ctx_len, ctx_len)}
    graph = onnx.load(onnx_path, load_external_data=False).graph
    shapes = {}
    for value in graph.input:
        if value.name.startswith("past_"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else bind[d.dim_param] for d in dims)
    return shapes


class CausalLMRunner:
    """Holds the graphs of one export and the KV cache of one batch.

    ``prefill`` takes left-padded prompts and runs them as successive chunks of the prefill graph (the last chunk
    padded with position -1); ``decode`` feeds one token per row. Without a decode graph, decode steps run on the
    prefill graph (one valid token, the rest padding); without a prefill graph, prompts run token by token.
    """

    def __init__(self, export_dir: str, device: str = "cpu", low_memory: bool = False, ctx_len: Optional[int] = None,
                 graph_files: Optional[Dict[str, str]] = None):
        """``low_memory``: load a graph when first used and drop the other, without onnxruntime's graph
        optimizations, so about one copy of the weights is in memory (for a one-off check such as the export's
        verification; generation switches graphs every call and wants them all loaded and optimized).
        ``ctx_len``: which of the exported context lengths to run (default: the largest). ``graph_files``: other
        ONNX files to run instead of the export's (the verification's fp16-emulating copies)."""
        with open(os.path.join(export_dir, "qaic_config.json")) as f:
            self.meta = json.load(f)
        if device not in ("cpu", "qaic"):
            raise UserError(f"unknown device {device!r}: use 'cpu' (onnxruntime) or 'qaic'")
        self.export_dir, self.device, self.low_memory = export_dir, device, low_memory
        self.graph_names = list(self.meta["graphs"])
        self.graph_files = {g: os.path.join(export_dir, f"{g}.onnx") for g in self.graph_names}
        self.graph_files.update(graph_files or {})
        s = self.meta["settings"]
        self.batch_size, self.prefill_seq_len = s["batch_size"], s["prefill_seq_len"]
        ctx_lens = self.meta.get("ctx_lens") or [s["ctx_len"]]
        if ctx_len is not None and ctx_len not in ctx_lens:
            raise UserError(f"the export serves context lengths {ctx_lens}, not {ctx_len}")
        self.ctx_len = ctx_len or max(ctx_lens)
        self.cache_shapes = cache_shapes(self.graph_files[self.graph_names[0]], self.batch_size, self.ctx_len,
                                         self.meta.get("sliding_window"))
        self._loaded = {}
        if not low_memory:
            for name in self.graph_names:
                self._graph(name)
        self.pad_token_id = self.meta.get("pad_token_id") or 0
        self.cache: Dict[str, np.ndarray] = {}

    def _graph(self, name: str):
        if name not in self._loaded:
            if self.low_memory:
                self._loaded.clear()
            self._loaded[name] = (OrtGraph(self.graph_files[name], optimize=not self.low_memory)
                                  if self.device == "cpu" else QAICGraph(os.path.join(self.export_dir, name, "qpc")))
        return self._loaded[name]

    def reset(self) -> None:
        self.cache = {name: np.zeros(shape, dtype=np.float32) for name, shape in self.cache_shapes.items()}

    def _run(self, graph: str, input_ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        if int(position_ids.max()) >= self.ctx_len:
            raise UserError(f"position {int(position_ids.max())} does not fit the context of {self.ctx_len} "
                            "tokens: export with a larger --ctx-len or generate fewer tokens")
        feeds = {"input_ids": input_ids.astype(np.int64), "position_ids": position_ids.astype(np.int64), **self.cache}
        out = self._graph(graph).run(feeds)
        for name in self.cache:
            if name + "_RetainedState" in out:
                self.cache[name] = out[name + "_RetainedState"]
        return out["logits"][:, -1, :]  # [B, V]

    def _check_batch(self, n: int) -> None:
        if n != self.batch_size:
            raise UserError(f"the graphs were exported for batch size {self.batch_size}, got {n} prompts: "
                            f"export with --batch-size {n}")

    def prefill(self, input_ids: np.ndarray, attention_mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Left-padded prompts [B, n] -> logits at each row's last token [B, V]. Resets the cache."""
        input_ids = np.asarray(input_ids)
        self._check_batch(input_ids.shape[0])
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
        positions = np.where(mask > 0, np.cumsum(mask, axis=1) - 1, -1)
        self.reset()
        if "prefill" in self.graph_names:
            graph, width = "prefill", self.prefill_seq_len
        else:
            graph, width = "decode", 1
        n = input_ids.shape[1]
        chunks = -(-n // width)
        pad = chunks * width - n
        ids = np.pad(input_ids, ((0, 0), (0, pad)), constant_values=self.pad_token_id)
        pos = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
        logits = None
        for c in range(chunks):
            cols = slice(c * width, (c + 1) * width)
            step = self._run(graph, ids[:, cols], pos[:, cols])
            has_token = (pos[:, cols] >= 0).any(axis=1)
            logits = step if logits is None else np.where(has_token[:, None], step, logits)
        return logits

    def decode(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One token per row [B] at positions [B] -> logits [B, V]."""
        tokens = np.asarray(tokens).reshape(-1, 1)
        positions = np.asarray(positions).reshape(-1, 1)
        self._check_batch(tokens.shape[0])
        if "decode" in self.graph_names:
            return self._run("decode", tokens, positions)
        width = self.prefill_seq_len
        ids = np.pad(tokens, ((0, 0), (0, width - 1)), constant_values=self.pad_token_id)
        pos = np.pad(positions, ((0, 0), (0, width - 1)), constant_values=-1)
        return self._run("prefill", ids, pos)
