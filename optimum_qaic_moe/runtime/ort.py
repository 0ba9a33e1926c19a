"""One exported ONNX graph in onnxruntime on the CPU: the reference backend, always available."""

from __future__ import annotations

import numpy as np


class OrtGraph:
    def __init__(self, onnx_path: str, optimize: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not optimize:
            # About one copy of the weights, mapped from the data file (file-backed pages, not anonymous memory):
            # no constant folding; no pre-packing, which copies every weight a MatMul multiplies by into the
            # kernel's own layout (at Qwen3-30B-A3B's shapes the LM head alone is 1.16 GiB); and no memory arena,
            # which keeps the largest working set of a run allocated for the session's life and fragments
            # (onnxruntime's session options ``session.disable_prepacking`` and ``enable_cpu_mem_arena``).
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.disable_prepacking", "1")
            options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds)))
