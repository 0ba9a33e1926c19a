"""Expert work read off an exported ONNX graph, to check the counters of ``dispatch.expert_work`` against what
the graph really contains.

An expert MatMul is one the exporter recorded inside the ``experts`` module of an ``MoEBlock`` (the node's
``pkg.torch.onnx.name_scopes`` / ``class_hierarchy`` metadata). Its shapes come from ONNX shape inference:
A [..., m, n] x B [..., n, p] executes 2 * (output elements) * n FLOPs and reads B's elements of weights.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

MOE_BLOCK_CLASS = "optimum_qaic_moe.moe.block.MoEBlock"


@dataclass(frozen=True)
class GraphExpertWork:
    matmuls: int  # expert MatMul nodes
    flops: int  # 2 * multiply-adds of those nodes
    weight_elements: int  # elements of their B operands (the expert weights each one reads)


def _is_expert_matmul(node) -> bool:
    meta = {p.key: p.value for p in node.metadata_props}
    if node.op_type != "MatMul" or "pkg.torch.onnx.class_hierarchy" not in meta:
        return False
    classes = ast.literal_eval(meta["pkg.torch.onnx.class_hierarchy"])
    scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
    # The module directly below an MoEBlock is its experts module when its scope is named "experts".
    return any(c == MOE_BLOCK_CLASS and i + 1 < len(scopes) and scopes[i + 1] == "experts"
               for i, c in enumerate(classes))


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
