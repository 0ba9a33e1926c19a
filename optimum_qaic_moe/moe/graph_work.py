"""Expert work read off an exported ONNX graph, to check the counters of ``dispatch.expert_work`` against what
the graph really contains.

An expert MatMul is one the exporter recorded inside the ``experts`` module of an ``MoEBlock`` (the node's
``namespace`` metadata). Its shapes come from ONNX shape inference:
A [..., m, n] x B [..., n, p] executes 2 * (output elements) * n FLOPs and reads B's elements of weights.
"""

from __future__ import annotations

import itertools
import math
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
    return any(cls == MOE_BLOCK_CLASS and nxt[0].split(".")[-1] == "experts"
               for (_, cls), nxt in itertools.pairwise(segments))


def _shapes(model) -> dict:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for v in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    return shapes


def graph_expert_work(path: str) -> GraphExpertWork:
    """Count the expert MatMuls of the ONNX file at ``path`` (external data is not loaded)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    shapes = _shapes(model)
    matmuls = flops = weights = 0
    for node in model.graph.node:
        if not _is_expert_matmul(node):
            continue
        a, b = node.input
        if a not in shapes or b not in shapes or node.output[0] not in shapes:
            raise ValueError(f"shape inference left a shape of expert MatMul {node.name} unknown")
        matmuls += 1
        flops += 2 * math.prod(shapes[node.output[0]]) * shapes[a][-1]
        weights += math.prod(shapes[b])
    return GraphExpertWork(matmuls, flops, weights)
