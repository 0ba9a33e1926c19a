"""One exported ONNX graph in onnxruntime on the CPU: the reference backend, always available."""

from __future__ import annotations

import numpy as np


class OrtGraph:
    def __init__(self, onnx_path: str, optimize: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not optimize:  # no constant folding or weight pre-packing: about one copy of the weights, not two
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds)))
