"""Run an exported graph the way ``qaic-compile -convert-to-fp16`` makes the card run it, in onnxruntime.

``emulate_fp16`` writes a copy of a graph in which every float value the device would hold in fp16 is rounded to
fp16 with IEEE round-to-nearest-even (overflow becomes inf, nothing is clamped): graph inputs (the KV cache is fp16
on the card), weights and other initializers, constants, and the output of every node, in the top-level graph and
inside the decoder-layer functions. Each rounding is a ``Cast(fp16) -> Cast(fp32)`` pair, so onnxruntime still
computes each op in fp32 and only the stored values are fp16, as on the card, whose MACs accumulate in higher
precision. The custom ops (CtxScatter/CtxGather families, CustomRMSNorm) are device kernels: their outputs are
rounded, their bodies are not.

What it cannot model: the compiler's own fusions and op implementations (a fused op may keep an intermediate in
higher precision, or compute a softmax or norm differently), accumulation order, MXFP6/MXINT8 formats.
"""

from __future__ import annotations

from .layers import LAYER_DOMAIN


def emulate_fp16(src: str, dst: str) -> None:
    """Write the fp16-emulating copy of the graph at ``src`` to ``dst`` (same directory: the weights stay in the
    shared data file)."""
    import onnx_ir as ir

    from .external_data import save_graph

    model = ir.load(src)
    _round_values(model.graph, list(model.graph.inputs) + list(model.graph.initializers.values()), top=True)
    for function in model.functions.values():
        if function.domain == LAYER_DOMAIN:
            _round_values(function.graph, [], top=False)
    save_graph(model, dst)


def _round_values(graph, extra_values, top: bool) -> None:
    import onnx_ir as ir

    values = [v for v in extra_values if _is_float(v)]
    for node in list(graph):
        values += [v for v in node.outputs if _is_float(v)]
    for value in values:
        if not value.uses() and not value.is_graph_output():
            continue
        to16 = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT16})
        to32 = ir.node("Cast", [to16.outputs[0]], attributes={"to": ir.DataType.FLOAT})
        to32.outputs[0].type, to32.outputs[0].shape = value.type, value.shape
        producer = value.producer()
        if producer is None:  # a graph input or an initializer: round before the first node
            graph.insert_before(graph.node(0), [to16, to32])
        else:
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


def _is_float(value) -> bool:
    import onnx_ir as ir

    return value.type is not None and getattr(value.type, "dtype", None) == ir.DataType.FLOAT
