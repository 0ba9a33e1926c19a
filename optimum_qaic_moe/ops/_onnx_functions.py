"""ONNX FunctionProtos and dynamo translation functions for the QAIC custom ops.

The function bodies use only default-domain ops whose signatures are unchanged from opset 14 to 23
(Shape without start/end, Gather, Range, Unsqueeze with axes input, Pad with pads input, Slice, Concat,
Transpose, Cast, Min, Equal, Where, Expand, ScatterND without reduction, GatherND with batch_dims).

Sentinel handling (onnxruntime rejects out-of-range indices):
* scatter: append one zero scratch row along S (Pad), Min(pos, S) sends INT32_MAX to it, ScatterND, slice
  the scratch row off;
* gather: Where(idx == INT32_MAX, 0, idx), then GatherND with batch_dims=1.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from . import INT32_MAX, OP_NAMES, QAIC_DOMAIN, QAIC_DOMAIN_VERSION

MIN_OPSET = 14
MAX_OPSET = 23


def _const_i64(name: str, values, scalar: bool = False) -> onnx.NodeProto:
    if scalar:
        t = helper.make_tensor(name + "_value", TensorProto.INT64, [], [int(values)])
    else:
        values = [int(v) for v in values]
        t = helper.make_tensor(name + "_value", TensorProto.INT64, [len(values)], values)
    return helper.make_node("Constant", [], [name], value=t)


def _node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def _batch_pos_indices(pos: str, shape_src: str) -> list[onnx.NodeProto]:
    """Nodes computing `idx` = int64 [B,P,2] of (b, min(pos[b,p], S)) where S = shape(shape_src)[1]
    (shape_src is the data tensor with S on axis 1). Also produces `S_1d` (int64 [1]); needs `ax0`."""
    return [
        _node("Cast", [pos], ["pos64"], to=TensorProto.INT64),
        _node("Shape", [shape_src], ["dshape"]),
        _const_i64("c0", 0, scalar=True),
        _const_i64("c1", 1, scalar=True),
        _const_i64("ax1", [1]),
        _const_i64("axm1", [-1]),
        _node("Gather", ["dshape", "c1"], ["S"], axis=0),  # scalar S
        _node("Unsqueeze", ["S", "ax0"], ["S_1d"]),  # [1]
        _node("Min", ["pos64", "S"], ["posc"]),  # sentinel -> scratch row S
        _node("Gather", ["dshape", "c0"], ["B"], axis=0),  # scalar B
        _node("Range", ["c0", "B", "c1"], ["brange"]),  # [B]
        _node("Unsqueeze", ["brange", "ax1"], ["bcol"]),  # [B,1]
        _node("Shape", ["pos64"], ["pshape"]),
        _node("Expand", ["bcol", "pshape"], ["bidx"]),  # [B,P]
        _node("Unsqueeze", ["bidx", "axm1"], ["bidx3"]),  # [B,P,1]
        _node("Unsqueeze", ["posc", "axm1"], ["posc3"]),  # [B,P,1]
        _node("Concat", ["bidx3", "posc3"], ["idx"], axis=-1),  # [B,P,2]
    ]


def _scatter_body(four_d: bool) -> list[onnx.NodeProto]:
    nodes = [_const_i64("ax0", [0])]
    if four_d:
        # [B,H,S,D] -> [B,S,H,D] so that (b, s) addresses a [H,D] slice.
        nodes += [
            _node("Transpose", ["data"], ["dataT"], perm=[0, 2, 1, 3]),
            _node("Transpose", ["upd"], ["updT"], perm=[0, 2, 1, 3]),
            _const_i64("pads", [0, 0, 0, 0, 0, 1, 0, 0]),
        ]
        src, updsrc = "dataT", "updT"
    else:
        nodes += [_const_i64("pads", [0, 0, 0, 0, 1, 0])]
        src, updsrc = "data", "upd"
    nodes += _batch_pos_indices("pos", src)
    nodes += [
        _node("Pad", [src, "pads"], ["padded"], mode="constant"),  # scratch row of zeros at index S
        _node("ScatterND", ["padded", "idx", updsrc], ["scattered"]),
        _node("Slice", ["scattered", "ax0", "S_1d", "ax1"], ["sliced" if four_d else "out"]),
    ]
    if four_d:
        nodes.append(_node("Transpose", ["sliced"], ["out"], perm=[0, 2, 1, 3]))
    return nodes


def _gather_body(four_d: bool) -> list[onnx.NodeProto]:
    nodes = [
        _node("Cast", ["idx"], ["idx64"], to=TensorProto.INT64),
        _const_i64("sentinel", INT32_MAX, scalar=True),
        _const_i64("zero", 0, scalar=True),
        _const_i64("axm1", [-1]),
        _node("Equal", ["idx64", "sentinel"], ["is_sentinel"]),
        _node("Where", ["is_sentinel", "zero", "idx64"], ["safe"]),
        _node("Unsqueeze", ["safe", "axm1"], ["safe3"]),  # [B,P,1]
    ]
    if four_d:
        nodes += [
            _node("Transpose", ["data"], ["dataT"], perm=[0, 2, 1, 3]),  # [B,S,H,D]
            _node("GatherND", ["dataT", "safe3"], ["gathered"], batch_dims=1),  # [B,P,H,D]
            _node("Transpose", ["gathered"], ["out"], perm=[0, 2, 1, 3]),  # [B,H,P,D]
        ]
    else:
        nodes.append(_node("GatherND", ["data", "safe3"], ["out"], batch_dims=1))  # [B,P,D]
    return nodes


_DOCS = {
    "CtxScatter": "data[B,H,S,D], pos[B,P], upd[B,H,P,D] -> data with data[b,:,pos[b,p]] = upd[b,:,p]; "
    "pos == INT32_MAX skipped.",
    "CtxGather": "data[B,H,S,D], idx[B,P] -> out[B,H,P,D] = data[b,:,idx[b,p]]; idx == INT32_MAX reads row 0.",
    "CtxScatter3D": "data[B,S,D], pos[B,P], upd[B,P,D] -> data with data[b,pos[b,p]] = upd[b,p]; "
    "pos == INT32_MAX skipped.",
    "CtxScatter3DInt": "CtxScatter3D with int32 data/upd.",
    "CtxGather3D": "data[B,S,D], idx[B,P] -> out[B,P,D] = data[b,idx[b,p]]; idx == INT32_MAX reads row 0.",
}


def build_functions(opset: int) -> list[onnx.FunctionProto]:
    opset = int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"QAIC op functions support default-domain opsets {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    specs = {
        "CtxScatter": (["data", "pos", "upd"], _scatter_body(True)),
        "CtxGather": (["data", "idx"], _gather_body(True)),
        "CtxScatter3D": (["data", "pos", "upd"], _scatter_body(False)),
        "CtxScatter3DInt": (["data", "pos", "upd"], _scatter_body(False)),
        "CtxGather3D": (["data", "idx"], _gather_body(False)),
    }
    funcs = []
    for name in OP_NAMES:
        inputs, nodes = specs[name]
        funcs.append(
            helper.make_function(
                QAIC_DOMAIN,
                name,
                inputs,
                ["out"],
                nodes,
                [helper.make_opsetid("", opset)],
                doc_string=_DOCS[name],
            )
        )
    return funcs


_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
_SIGNATURES = {
    # name: (input names, data type strings)
    "CtxScatter": (["data", "pos", "upd"], _FLOAT_TYPES),
    "CtxGather": (["data", "idx"], _FLOAT_TYPES),
    "CtxScatter3D": (["data", "pos", "upd"], _FLOAT_TYPES),
    "CtxScatter3DInt": (["data", "pos", "upd"], ["tensor(int32)"]),
    "CtxGather3D": (["data", "idx"], _FLOAT_TYPES),
}


def op_schema(name: str) -> onnx.defs.OpSchema:
    """An (unregistered) OpSchema for a QAIC op, used only to let onnxscript emit the bare node."""
    inputs, data_types = _SIGNATURES[name]
    fp = onnx.defs.OpSchema.FormalParameter
    params = [fp(n, "T" if n in ("data", "upd") else "Tind") for n in inputs]
    return onnx.defs.OpSchema(
        name,
        QAIC_DOMAIN,
        QAIC_DOMAIN_VERSION,
        _DOCS[name],
        inputs=params,
        outputs=[fp("out", "T")],
        type_constraints=[
            ("T", data_types, "data type"),
            ("Tind", ["tensor(int32)", "tensor(int64)"], "index type"),
        ],
    )


def build_translation_table() -> dict:
    """Translations emitting the bare custom-domain node.

    The dynamo exporter inlines a translation that is an onnxscript function with a body, so each
    translation is a plain python callable that records a single node of an ``onnxscript`` ``Op`` built
    from an unregistered OpSchema (nothing is added to onnx's global schema registry). The function
    bodies are attached to the model after export (see ``exporters.onnx_export``).
    """
    import torch
    from onnxscript import values

    import optimum_qaic_moe.ops  # noqa: F401  (registers torch.ops.qaic.*)

    qaic = values.Opset(QAIC_DOMAIN, QAIC_DOMAIN_VERSION)
    ops = {name: values.Op(qaic, name, op_schema(name)) for name in OP_NAMES}

    def ctx_scatter(data, pos, upd):
        return ops["CtxScatter"](data, pos, upd)

    def ctx_gather(data, idx):
        return ops["CtxGather"](data, idx)

    def ctx_scatter_3d(data, pos, upd):
        return ops["CtxScatter3D"](data, pos, upd)

    def ctx_scatter_3d_int(data, pos, upd):
        return ops["CtxScatter3DInt"](data, pos, upd)

    def ctx_gather_3d(data, idx):
        return ops["CtxGather3D"](data, idx)

    return {
        torch.ops.qaic.ctx_scatter.default: ctx_scatter,
        torch.ops.qaic.ctx_gather.default: ctx_gather,
        torch.ops.qaic.ctx_scatter_3d.default: ctx_scatter_3d,
        torch.ops.qaic.ctx_scatter_3d_int.default: ctx_scatter_3d_int,
        torch.ops.qaic.ctx_gather_3d.default: ctx_gather_3d,
    }
