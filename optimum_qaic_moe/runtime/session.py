"""Run exported QAIC causal-LM graphs: chunked prefill and decode with the KV cache kept as retained state.

The graph-running backend is pluggable: ``OrtGraph`` (onnxruntime, the CPU reference, always available) or
``QAICGraph`` (the QAIC SDK's Python runtime, when importable). Both take and return numpy arrays by name.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

from ..settings import UserError


class OrtGraph:
    def __init__(self, onnx_path: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds)))


class QAICGraph:
    """A compiled program (QPC) on a Cloud AI 100 device through the SDK's ``qaicrt`` Python runtime."""

    def __init__(self, qpc_dir: str, device_id: int = 0):
        try:
            import qaicrt  # noqa: F401  proprietary, ships with the QAIC platform SDK
            from QEfficient.generation.cloud_infer import QAICInferenceSession
        except ImportError as e:
            raise UserError("device='qaic' needs the QAIC platform SDK's Python runtime (qaicrt) and its session "
                            "wrapper; neither is importable here. Use device='cpu' (onnxruntime) instead") from e
        self.session = QAICInferenceSession(qpc_dir, device_ids=[device_id])
        self.session.skip_buffers([n for n in self.session.input_names + self.session.output_names
                                   if n.startswith("past_")])

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if not k.startswith("past_")}  # retained on device
        return self.session.run(feeds)


class CausalLMRunner:
    """Holds the graphs of one export and the KV cache of one batch.

    ``prefill`` takes left-padded prompts and runs them as successive chunks of the prefill graph (the last chunk
    padded with position -1); ``decode`` feeds one token per row. Without a decode graph, decode steps run on the
    prefill graph (one valid token, the rest padding); without a prefill graph, prompts run token by token.
    """

    def __init__(self, export_dir: str, device: str = "cpu"):
        with open(os.path.join(export_dir, "qaic_config.json")) as f:
            self.meta = json.load(f)
        self.graphs = {}
        for name in self.meta["graphs"]:
            if device == "cpu":
                self.graphs[name] = OrtGraph(os.path.join(export_dir, name, "model.onnx"))
            elif device == "qaic":
                self.graphs[name] = QAICGraph(os.path.join(export_dir, name, "qpc"))
            else:
                raise UserError(f"unknown device {device!r}: use 'cpu' (onnxruntime) or 'qaic'")
        s = self.meta["settings"]
        self.batch_size, self.prefill_seq_len, self.ctx_len = s["batch_size"], s["prefill_seq_len"], s["ctx_len"]
        self.pad_token_id = self.meta.get("pad_token_id") or 0
        self.cache: Dict[str, np.ndarray] = {}

    def reset(self) -> None:
        self.cache = {name: np.zeros(shape, dtype=np.float32) for name, shape in self.meta["cache_shapes"].items()}

    def _run(self, graph: str, input_ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        if int(position_ids.max()) >= self.ctx_len:
            raise UserError(f"position {int(position_ids.max())} does not fit the context of {self.ctx_len} "
                            "tokens: export with a larger --ctx-len or generate fewer tokens")
        feeds = {"input_ids": input_ids.astype(np.int64), "position_ids": position_ids.astype(np.int64), **self.cache}
        out = self.graphs[graph].run(feeds)
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
        if "prefill" in self.graphs:
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
        if "decode" in self.graphs:
            return self._run("decode", tokens, positions)
        width = self.prefill_seq_len
        ids = np.pad(tokens, ((0, 0), (0, width - 1)), constant_values=self.pad_token_id)
        pos = np.pad(positions, ((0, 0), (0, width - 1)), constant_values=-1)
        return self._run("prefill", ids, pos)
