"""Run an exported graph the way ``qaic-compile -convert-to-fp16`` makes the card run it, in onnxruntime.

``emulate_fp16`` writes a copy of a graph in which every float value the device would hold in fp16 is rounded to
fp16 with IEEE round-to-nearest-even (overflow becomes inf, nothing is clamped): graph inputs (the KV cache is fp16
on the card), weights and other initializers, constants, and the output of every node, in the top-level graph and
inside the decoder-layer functions. Each rounding is a ``Cast(fp16) -> Cast(fp32)`` pair, so onnxruntime still
computes each op in fp32 and only the stored values are fp16, as on the card, whose MACs accumulate in higher
precision. The custom ops (CtxScatter/CtxGather families, CustomRMSNorm) are device kernels: their outputs are
rounded, their bodies are not.

Where a weight is rounded matters for memory, not for the values. A node output is rounded where it is made; an
input or weight (the decoder-layer functions round their own inputs) is rounded just before the first node that
reads its values, and only for such nodes. Nodes that only move data (Slice, Gather, Reshape, ...) read it
unrounded: their outputs are rounded, and rounding commutes with moving values, so the result is the same to the
bit. This is what keeps the verification's memory bounded: the blocked prefill slices a few experts at a time and
the decode graph gathers the routed ones, so only those are copied and rounded, never a layer's whole [E, ...]
expert tensors (2.25 GiB fp32 per layer at Qwen3-30B-A3B's shapes), and the embedding is gathered row by row. A
MatMul by a weight larger than ``SPLIT_BYTES`` (the LM head: 1.16 GiB fp32 at 30B-A3B's shapes) is computed in
column blocks, each block sliced, rounded and multiplied in turn, then concatenated: the same products, at most
one block's copy in memory. onnxruntime places each rounding just before its consumer (its default execution order
visits a node's inputs when it first needs them), so a weight's rounded copy lives only while it is used.

What it cannot model: the compiler's own fusions and op implementations (a fused op may keep an intermediate in
higher precision, or compute a softmax or norm differently), accumulation order, MXFP6/MXINT8 formats.
"""

from __future__ import annotations

from .layers import LAYER_DOMAIN

SPLIT_BYTES = 64 << 20  # a MatMul by a larger weight runs in column blocks of at most this many fp32 bytes

# Ops whose outputs are their inputs' values moved around (rounded again by ``_round_values``), or that read no
# values at all: a source consumed only by these needs no rounding of its own.
_MOVES_VALUES = {
    "Concat",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "Identity",
    "Reshape",
    "Slice",
    "Split",
    "Squeeze",
    "Tile",
    "Transpose",
    "Unsqueeze",
}
_READS_NO_VALUES = {"Shape", "Size"}

# Element types of the outputs of ops in decoder-layer functions, where the exporter leaves many values untyped (a
# function body has no value_info): without a type a value would escape rounding. Ops not listed keep no type.
_SAME_AS_FIRST_INPUT = _MOVES_VALUES | {
    "Abs",
    "Add",
    "Clip",
    "CumSum",
    "Div",
    "Erf",
    "Exp",
    "Log",
    "MatMul",
    "Max",
    "Min",
    "Mul",
    "Neg",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Sigmoid",
    "Softmax",
    "Sqrt",
    "Sub",
    "Tanh",
}
_BOOLEAN = {"And", "Equal", "Greater", "GreaterOrEqual", "IsInf", "IsNaN", "Less", "LessOrEqual", "Not", "Or", "Xor"}
_INT64 = {"ArgMax", "ArgMin", "NonZero", "Shape", "Size"}


def emulate_fp16(src: str, dst: str) -> None:
    """Write the fp16-emulating copy of the graph at ``src`` to ``dst`` (same directory: the weights stay in the
    shared data file)."""
    import onnx_ir as ir

    from .external_data import save_graph

    model = ir.load(src)
    functions = [f for f in model.functions.values() if f.domain == LAYER_DOMAIN]
    for function in functions:  # function inputs carry no types: take them from a call
        call = next((n for n in model.graph if n.domain == LAYER_DOMAIN and n.op_type == function.name), None)
        for param, arg in zip(function.inputs, call.inputs if call is not None else []):
            if param.type is None and arg is not None:
                param.type = arg.type
    _round_values(model.graph, list(model.graph.inputs) + list(model.graph.initializers.values()))
    for function in functions:
        _infer_element_types(function.graph)
        _round_values(function.graph, list(function.inputs))
    save_graph(model, dst)


def _round_values(graph, sources) -> None:
    """Round every float node output of ``graph`` where it is made, then every float source (graph or function
    input, initializer) just before the first node that reads its values."""
    for node in list(graph):
        for value in node.outputs:
            if _is_float(value) and (value.uses() or value.is_graph_output()):
                _round_output(graph, node, value)
    for value in sources:
        if not _is_float(value):
            continue
        readers = [(user, index) for user, index in value.uses() if _reads_values(user)]
        for user, index in list(readers):
            if user.op_type == "MatMul" and user.domain == "" and index == 1 and _split_matmul(graph, user, value):
                readers.remove((user, index))
        if readers:
            order = {id(node): i for i, node in enumerate(graph)}
            to16, to32 = _cast_pair(value)
            graph.insert_before(min((user for user, _ in readers), key=lambda n: order[id(n)]), [to16, to32])
            for user, index in readers:
                user.replace_input_with(index, to32.outputs[0])


def _infer_element_types(graph) -> None:
    """Give every untyped tensor output of a standard op the element type it must have (shapes stay unknown)."""
    import onnx_ir as ir

    def dtype_of(value):
        return getattr(value.type, "dtype", None) if value is not None and value.type is not None else None

    for node in graph:
        if node.domain != "":
            continue
        op, attrs = node.op_type, node.attributes
        if op == "Constant":
            tensor = attrs["value"].value if "value" in attrs else None
            kinds = {
                "value_float": ir.DataType.FLOAT,
                "value_floats": ir.DataType.FLOAT,
                "value_int": ir.DataType.INT64,
                "value_ints": ir.DataType.INT64,
            }
            dtype = tensor.dtype if tensor is not None else next((kinds.get(k) for k in attrs), None)
        elif op == "Cast":
            dtype = ir.DataType(attrs["to"].value)
        elif op == "CastLike":
            dtype = dtype_of(node.inputs[1])
        elif op == "Where":
            dtype = dtype_of(node.inputs[1])
        elif op in _BOOLEAN:
            dtype = ir.DataType.BOOL
        elif op in _INT64:
            dtype = ir.DataType.INT64
        elif op in _SAME_AS_FIRST_INPUT or op == "TopK":
            dtype = dtype_of(node.inputs[0])
        else:
            continue
        for index, value in enumerate(node.outputs):
            if value.type is None and dtype is not None:
                value.type = ir.TensorType(ir.DataType.INT64 if op == "TopK" and index == 1 else dtype)


def _reads_values(node) -> bool:
    """False for a node that needs its float input unrounded: a decoder-layer call (the function rounds its inputs
    itself), an op that reads no values, and an op that only moves values into float outputs (rounded in turn)."""
    if node.domain == LAYER_DOMAIN:
        return False
    if node.domain != "":
        return True
    if node.op_type in _READS_NO_VALUES:
        return False
    return not (node.op_type in _MOVES_VALUES and all(_is_float(o) for o in node.outputs))


def _cast_pair(value):
    import onnx_ir as ir

    to16 = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT16})
    to32 = ir.node("Cast", [to16.outputs[0]], attributes={"to": ir.DataType.FLOAT})
    to32.outputs[0].type, to32.outputs[0].shape = value.type, value.shape
    return to16, to32


def _round_output(graph, producer, value) -> None:
    to16, to32 = _cast_pair(value)
    graph.insert_after(producer, [to16, to32])
    for user, index in list(value.uses()):
        if user is not to16:
            user.replace_input_with(index, to32.outputs[0])
    if value.is_graph_output():
        outputs = graph.outputs
        position = list(outputs).index(value)
        name = value.name
        value.name = f"{name}__fp32"
        to32.outputs[0].name = name
        outputs[position] = to32.outputs[0]


def _split_matmul(graph, matmul, weight) -> bool:
    """Replace ``matmul`` (x @ weight, weight a 2-D initializer over SPLIT_BYTES) by column blocks of the weight,
    each sliced, rounded and multiplied, then concatenated. False (nothing changed) when it does not apply."""
    import numpy as np
    import onnx_ir as ir

    tensor = weight.const_value
    shape = tuple(tensor.shape) if tensor is not None else ()
    out = matmul.outputs[0]
    if len(shape) != 2 or not all(isinstance(d, int) for d in shape) or out.is_graph_output():
        return False
    rows, cols = shape
    if rows * cols * 4 <= SPLIT_BYTES:
        return False
    block = max(1, SPLIT_BYTES // (4 * rows))

    def const(v):
        return ir.node("Constant", [], attributes={"value": ir.tensor(np.array([v], dtype=np.int64))})

    nodes, products = [], []
    axis = const(1)
    nodes.append(axis)
    for start in range(0, cols, block):
        begin, end = const(start), const(min(start + block, cols))
        piece = ir.node("Slice", [weight, begin.outputs[0], end.outputs[0], axis.outputs[0]])
        piece.outputs[0].type = weight.type
        to16, to32 = _cast_pair(piece.outputs[0])
        product = ir.node("MatMul", [matmul.inputs[0], to32.outputs[0]])
        product.outputs[0].type = out.type
        nodes += [begin, end, piece, to16, to32, product]
        products.append(product.outputs[0])
    concat = ir.node("Concat", products, attributes={"axis": -1})
    concat.outputs[0].type, concat.outputs[0].shape = out.type, out.shape
    graph.insert_before(matmul, [*nodes, concat])
    out.replace_all_uses_with(concat.outputs[0])
    graph.remove(matmul, safe=True)
    return True


def _is_float(value) -> bool:
    import onnx_ir as ir

    return value.type is not None and getattr(value.type, "dtype", None) == ir.DataType.FLOAT
