"""ONNX FunctionProtos and dynamo translation functions for the QAIC custom ops.

The bodies address the data where it lies, as the device kernels do: ``CtxScatter`` / ``CtxGather`` work on
``[B, H, S, D]`` directly (ScatterND / GatherND over ``(b, h, s)``), with no transpose, pad or slice of the
cache, so a call moves only the rows it reads or writes (plus the copy onnxruntime's ScatterND makes of its
input). Only default-domain ops whose signatures are the same from opset 14 to 23 are used, except
``ReduceMean`` in ``CustomRMSNorm`` (axes became an input at opset 18: both forms are written).

Sentinel handling (onnxruntime rejects out-of-range indices):
* gather: ``Where(idx == INT32_MAX, 0, idx)``, then GatherND.
* scatter: every skipped entry is turned into a copy of one *anchor* write of the same batch row: the row's
  first valid entry, or, when it has none, "write data[b, ..., 0] back to slot 0". Duplicate ScatterND indices
  then always carry identical values, so the result does not depend on the order of the writes. An extra
  anchor column keeps this valid when the update has no rows at all (P = 0).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from . import INT32_MAX, OP_NAMES, QAIC_DOMAIN, QAIC_DOMAIN_VERSION, RMS_NORM_DOMAIN

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


def _dim(tensor: str, axis: int, out: str) -> list[onnx.NodeProto]:
    """``out`` = int64 [1] holding ``shape(tensor)[axis]``."""
    return [_node("Shape", [tensor], [out + "_shape"]), _node("Gather", [out + "_shape", f"ax{axis}"], [out], axis=0)]


def _axis_consts(*axes: int) -> list[onnx.NodeProto]:
    return [_const_i64(f"ax{a}", [a]) for a in axes]


def _anchored_positions(four_d: bool) -> list[onnx.NodeProto]:
    """From data, pos [B,P], upd -> pos_safe [B,P+1] (int64) and upd_safe (P+1 rows): see the module docstring."""
    p_axis = 2 if four_d else 1  # where P (and S) lie in upd (and data)
    row_unsq = [1, 3] if four_d else [2]  # [B,P+1] -> broadcastable against upd's shape
    nodes = _axis_consts(0, 1, 2) + [
        _const_i64("sentinel", INT32_MAX, scalar=True),
        _const_i64("zero1", [0]),
        _const_i64("one1", [1]),
        _const_i64("row_unsq", row_unsq),
        _node("Cast", ["pos"], ["pos64"], to=TensorProto.INT64),  # [B,P]
        _node("Equal", ["pos64", "sentinel"], ["skipped"]),
        _node("Not", ["skipped"], ["valid"]),
        _node("Cast", ["valid"], ["valid_i"], to=TensorProto.INT64),
    ]
    nodes += _dim("pos64", 0, "B") + _dim("pos64", 1, "P")
    nodes += [
        _node("Concat", ["B", "one1"], ["b1_shape"], axis=0),
        _node("Expand", ["one1", "b1_shape"], ["ones_col"]),  # [B,1]
        _node("Expand", ["zero1", "b1_shape"], ["zeros_col"]),  # [B,1]
        _node("Concat", ["valid_i", "ones_col"], ["valid_ext_i"], axis=1),
        _node("ArgMax", ["valid_ext_i"], ["first"], axis=1, keepdims=1),  # [B,1]: first valid, P if none
        _node("Less", ["first", "P"], ["has_valid"]),  # [B,1]
        _node("Not", ["has_valid"], ["no_valid"]),
        _node("Concat", ["valid", "no_valid"], ["valid_ext"], axis=1),  # [B,P+1]: the extra column anchors
        _node("Concat", ["pos64", "zeros_col"], ["pos_ext"], axis=1),  # extra column: slot 0
        _node("GatherElements", ["pos_ext", "first"], ["anchor_pos"], axis=1),  # [B,1]
        _node("Where", ["valid_ext", "pos_ext", "anchor_pos"], ["pos_safe"]),  # [B,P+1]
        # updates: the extra row is data's own slot 0, so the no-valid anchor writes back what is there. Rows are
        # picked with GatherElements, not Where: onnxruntime's Where does not keep the sign of -0.0.
        _node("Slice", ["data", "zero1", "one1", f"ax{p_axis}"], ["data0"]),
        _node("Concat", ["upd", "data0"], ["upd_ext"], axis=p_axis),
        _const_i64("c0s", 0, scalar=True),
        _const_i64("c1s", 1, scalar=True),
        _node("Squeeze", ["P", "ax0"], ["P_s"]),
        _node("Add", ["P_s", "c1s"], ["P1_s"]),
        _node("Range", ["c0s", "P1_s", "c1s"], ["rows"]),  # [P+1]
        _node("Where", ["valid_ext", "rows", "first"], ["sel"]),  # [B,P+1]: own row, or the anchor's
        _node("Unsqueeze", ["sel", "row_unsq"], ["sel_u"]),
        _node("Shape", ["upd_ext"], ["upd_ext_shape"]),
        _node("Expand", ["sel_u", "upd_ext_shape"], ["sel_idx"]),
        _node("GatherElements", ["upd_ext", "sel_idx"], ["upd_safe"], axis=p_axis),
    ]
    return nodes


def _scatter_body(four_d: bool) -> list[onnx.NodeProto]:
    nodes = _anchored_positions(four_d)
    if four_d:  # indices [B,H,P+1,3] = (b, h, pos)
        nodes += _dim("data", 1, "H") + [
            _node("Shape", ["pos_safe"], ["ps_shape"]),
            _node("Gather", ["ps_shape", "ax1"], ["P1"], axis=0),
            _node("Concat", ["B", "H", "P1", "one1"], ["idx_shape"], axis=0),
            _const_i64("c0", 0, scalar=True),
            _const_i64("c1", 1, scalar=True),
            _node("Squeeze", ["B", "ax0"], ["B_s"]),
            _node("Squeeze", ["H", "ax0"], ["H_s"]),
            _node("Range", ["c0", "B_s", "c1"], ["b_range"]),
            _node("Range", ["c0", "H_s", "c1"], ["h_range"]),
            _const_i64("b_unsq", [1, 2, 3]),
            _const_i64("h_unsq", [0, 2, 3]),
            _const_i64("p_unsq", [1, 3]),
            _node("Unsqueeze", ["b_range", "b_unsq"], ["b_u"]),
            _node("Unsqueeze", ["h_range", "h_unsq"], ["h_u"]),
            _node("Unsqueeze", ["pos_safe", "p_unsq"], ["p_u"]),
            _node("Expand", ["b_u", "idx_shape"], ["b_idx"]),
            _node("Expand", ["h_u", "idx_shape"], ["h_idx"]),
            _node("Expand", ["p_u", "idx_shape"], ["p_idx"]),
            _node("Concat", ["b_idx", "h_idx", "p_idx"], ["indices"], axis=3),
        ]
    else:  # indices [B,P+1,2] = (b, pos)
        nodes += [
            _node("Shape", ["pos_safe"], ["ps_shape"]),
            _node("Concat", ["ps_shape", "one1"], ["idx_shape"], axis=0),
            _const_i64("c0", 0, scalar=True),
            _const_i64("c1", 1, scalar=True),
            _node("Squeeze", ["B", "ax0"], ["B_s"]),
            _node("Range", ["c0", "B_s", "c1"], ["b_range"]),
            _const_i64("b_unsq", [1, 2]),
            _node("Unsqueeze", ["b_range", "b_unsq"], ["b_u"]),
            _node("Unsqueeze", ["pos_safe", "ax2"], ["p_u"]),
            _node("Expand", ["b_u", "idx_shape"], ["b_idx"]),
            _node("Concat", ["b_idx", "p_u"], ["indices"], axis=2),
        ]
    nodes.append(_node("ScatterND", ["data", "indices", "upd_safe"], ["out"]))
    return nodes


def _gather_body(four_d: bool) -> list[onnx.NodeProto]:
    nodes = [
        _node("Cast", ["idx"], ["idx64"], to=TensorProto.INT64),
        _const_i64("sentinel", INT32_MAX, scalar=True),
        _const_i64("zero", 0, scalar=True),
        _const_i64("axm1", [-1]),
        _node("Equal", ["idx64", "sentinel"], ["is_sentinel"]),
        _node("Where", ["is_sentinel", "zero", "idx64"], ["safe"]),  # [B,P]
    ]
    if four_d:  # [B,P] -> [B,H,P,1], GatherND over (b, h) batches
        nodes += (
            _axis_consts(0, 1)
            + _dim("data", 0, "B")
            + _dim("data", 1, "H")
            + [
                _node("Shape", ["safe"], ["safe_shape"]),
                _node("Gather", ["safe_shape", "ax1"], ["P"], axis=0),
                _node("Concat", ["B", "H", "P"], ["bhp"], axis=0),
                _node("Unsqueeze", ["safe", "ax1"], ["safe_u"]),  # [B,1,P]
                _node("Expand", ["safe_u", "bhp"], ["safe_bhp"]),
                _node("Unsqueeze", ["safe_bhp", "axm1"], ["safe4"]),
                _node("GatherND", ["data", "safe4"], ["out"], batch_dims=2),  # [B,H,P,D]
            ]
        )
    else:
        nodes += [
            _node("Unsqueeze", ["safe", "axm1"], ["safe3"]),  # [B,P,1]
            _node("GatherND", ["data", "safe3"], ["out"], batch_dims=1),  # [B,P,D]
        ]
    return nodes


def _rms_norm_body(opset: int) -> list[onnx.NodeProto]:
    """weight * (x / sqrt(mean(x^2, -1) + epsilon)), the same sequence of ops as the eager implementation."""
    eps = helper.make_node("Constant", [], ["eps"])
    eps.attribute.append(_attr_ref("value_float", "epsilon"))
    nodes = [
        eps,
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        _node("Pow", ["hidden_states", "two"], ["sq"]),
    ]
    if opset >= 18:
        nodes += [_const_i64("axm1", [-1]), _node("ReduceMean", ["sq", "axm1"], ["var"], keepdims=1)]
    else:
        nodes.append(_node("ReduceMean", ["sq"], ["var"], axes=[-1], keepdims=1))
    nodes += [
        _node("CastLike", ["eps", "var"], ["eps_t"])
        if opset >= 15
        # CastLike is opset 15
        else _node("Cast", ["eps"], ["eps_t"], to=TensorProto.FLOAT),
        _node("Add", ["var", "eps_t"], ["var_eps"]),
        _node("Sqrt", ["var_eps"], ["rms"]),
        _node("Reciprocal", ["rms"], ["inv_rms"]),
        _node("Mul", ["hidden_states", "inv_rms"], ["normed"]),
        _node("Mul", ["weight", "normed"], ["out"]),
    ]
    return nodes


def _attr_ref(name: str, ref: str) -> onnx.AttributeProto:
    attr = onnx.AttributeProto()
    attr.name, attr.ref_attr_name, attr.type = name, ref, onnx.AttributeProto.FLOAT
    return attr


_DOCS = {
    "CtxScatter": "data[B,H,S,D], pos[B,P], upd[B,H,P,D] -> data with data[b,:,pos[b,p]] = upd[b,:,p]; "
    "pos == INT32_MAX skipped.",
    "CtxGather": "data[B,H,S,D], idx[B,P] -> out[B,H,P,D] = data[b,:,idx[b,p]]; idx == INT32_MAX reads row 0.",
    "CtxScatter3D": "data[B,S,D], pos[B,P], upd[B,P,D] -> data with data[b,pos[b,p]] = upd[b,p]; "
    "pos == INT32_MAX skipped.",
    "CtxScatter3DInt": "CtxScatter3D with int32 data/upd.",
    "CtxGather3D": "data[B,S,D], idx[B,P] -> out[B,P,D] = data[b,idx[b,p]]; idx == INT32_MAX reads row 0.",
    "CustomRMSNorm": "hidden_states[..., H], weight[H], attribute epsilon -> "
    "weight * hidden_states / sqrt(mean(hidden_states^2, -1) + epsilon).",
}


def _check_opset(opset: int) -> int:
    opset = int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"QAIC op functions support default-domain opsets {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    return opset


def build_functions(opset: int) -> list[onnx.FunctionProto]:
    """The five QAIC cache/dispatch ops, then CustomRMSNorm."""
    opset = _check_opset(opset)
    specs = {
        "CtxScatter": (["data", "pos", "upd"], _scatter_body(True)),
        "CtxGather": (["data", "idx"], _gather_body(True)),
        "CtxScatter3D": (["data", "pos", "upd"], _scatter_body(False)),
        "CtxScatter3DInt": (["data", "pos", "upd"], _scatter_body(False)),
        "CtxGather3D": (["data", "idx"], _gather_body(False)),
    }
    ctx_ops = [
        helper.make_function(
            QAIC_DOMAIN, name, inputs, ["out"], nodes, [helper.make_opsetid("", opset)], doc_string=_DOCS[name]
        )
        for name, (inputs, nodes) in ((n, specs[n]) for n in OP_NAMES)
    ]
    return ctx_ops + [rms_norm_function(opset)]


def rms_norm_function(opset: int) -> onnx.FunctionProto:
    """``CustomRMSNorm`` in domain com.qti.aisw.onnx (version 1), the name the QAIC compiler knows."""
    opset = _check_opset(opset)
    return helper.make_function(
        RMS_NORM_DOMAIN,
        "CustomRMSNorm",
        ["hidden_states", "weight"],
        ["out"],
        _rms_norm_body(opset),
        [helper.make_opsetid("", opset)],
        attributes=["epsilon"],
        doc_string=_DOCS["CustomRMSNorm"],
    )


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
    fp = onnx.defs.OpSchema.FormalParameter
    if name == "CustomRMSNorm":
        return onnx.defs.OpSchema(
            name,
            RMS_NORM_DOMAIN,
            1,
            _DOCS[name],
            inputs=[fp("hidden_states", "T"), fp("weight", "T")],
            outputs=[fp("out", "T")],
            type_constraints=[("T", _FLOAT_TYPES, "float")],
            attributes=[onnx.defs.OpSchema.Attribute("epsilon", onnx.defs.OpSchema.AttrType.FLOAT, "epsilon")],
        )
    inputs, data_types = _SIGNATURES[name]
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
    rms_norm = values.Op(values.Opset(RMS_NORM_DOMAIN, 1), "CustomRMSNorm", op_schema("CustomRMSNorm"))

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

    def custom_rms_norm(hidden_states, weight, epsilon: float):
        return rms_norm(hidden_states, weight, epsilon=epsilon)

    return {
        torch.ops.qaic.ctx_scatter.default: ctx_scatter,
        torch.ops.qaic.ctx_gather.default: ctx_gather,
        torch.ops.qaic.ctx_scatter_3d.default: ctx_scatter_3d,
        torch.ops.qaic.ctx_scatter_3d_int.default: ctx_scatter_3d_int,
        torch.ops.qaic.ctx_gather_3d.default: ctx_gather_3d,
        torch.ops.qaic.rms_norm.default: custom_rms_norm,
    }
