"""Expert work read off an exported ONNX graph, to check the counters of ``dispatch.expert_work`` against what
the graph really contains.

An expert MatMul is one the exporter recorded inside the ``experts`` module of an ``MoEBlock`` (the node's
``namespace`` metadata, kept when the decoder-layer functions are inlined, so every layer's MatMuls count). Their
shapes are the ones they have when the graph runs: the graph is run once in onnxruntime, with its symbolic dims
bound as the compiler's first specialization binds them, and the MatMuls' operands as extra outputs.
A [..., m, n] x B [..., n, p] executes 2 * (output elements) * n FLOPs and reads B's elements of weights.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass

MOE_BLOCK_CLASS = "optimum_qaic_moe.moe.block.MoEBlock"


@dataclass(frozen=True)
class GraphExpertWork:
    matmuls: int  # expert MatMul nodes
    flops: int  # 2 * multiply-adds of those nodes
    weight_elements: int  # elements of their B operands (the expert weights each one reads)


def _is_expert_matmul(node) -> bool:
    """The exporter's ``namespace`` metadata reads ``path: class/path: class/...`` down the module tree; an expert
    MatMul has an ``MoEBlock`` segment followed by the segment of its ``experts`` submodule."""
    meta = {p.key: p.value for p in node.metadata_props}
    if node.op_type != "MatMul" or "namespace" not in meta:
        return False
    segments = [seg.split(": ") for seg in meta["namespace"].split("/")]  # [[module path, class], ...]
    return any(
        cls == MOE_BLOCK_CLASS and nxt[0].split(".")[-1] == "experts" for (_, cls), nxt in itertools.pairwise(segments)
    )


def _default_dims(path: str) -> dict:
    spec = os.path.join(os.path.splitext(path)[0], "specializations.json")  # <export>/<graph>/specializations.json
    if not os.path.isfile(spec):
        return {}
    with open(spec) as f:
        return {k: int(v) for k, v in json.load(f)["specializations"][0].items()}


def _feeds(session, dims: dict) -> dict:
    import numpy as np

    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else dims[d] for d in value.shape]
        if value.name == "position_ids":
            feeds[value.name] = np.broadcast_to(np.arange(shape[1], dtype=np.int64), shape).copy()
        elif value.name == "input_ids":
            feeds[value.name] = np.zeros(shape, np.int64)
        else:
            feeds[value.name] = np.zeros(shape, np.float32)
    return feeds


def graph_expert_work(path: str, dims: dict | None = None) -> GraphExpertWork:
    """Count the expert MatMuls of the ONNX graph at ``path``, every decoder layer's. Symbolic input dims take the
    values of ``dims`` (default: the graph's first compiler specialization)."""
    import onnx
    import onnx.inliner
    import onnxruntime as ort

    dims = _default_dims(path) if dims is None else dims
    model = onnx.inliner.inline_local_functions(onnx.load(path, load_external_data=False))
    matmuls = [n for n in model.graph.node if _is_expert_matmul(n)]
    wanted = sorted({name for n in matmuls for name in (*n.input, n.output[0])})
    known = {v.name for v in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted if name not in known)
    # next to the original, so that its external data resolves
    fd, probe = tempfile.mkstemp(suffix=".onnx", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        onnx.save(model, probe)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(probe, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        shapes = {n: v.shape for n, v in zip(names, session.run(None, _feeds(session, dims)))}
    finally:
        os.remove(probe)
    flops = weights = 0
    for node in matmuls:
        a, b = node.input
        flops += 2 * math.prod(shapes[node.output[0]]) * shapes[a][-1]
        weights += math.prod(shapes[b])
    return GraphExpertWork(len(matmuls), flops, weights)
