"""Trace a ``CausalLMGraph`` into one ONNX model whose decoder layers are ONNX functions.

Each kind of layer (``CausalLMGraph.layer_kinds``) is traced once, on its own, into a function whose inputs are the
activations (hidden, cos, sin, position_ids, past_k, past_v) followed by the layer's weights; the top-level graph
is traced with every layer replaced by a placeholder op, which then becomes a call of its kind's function with
that layer's weights. Trace time and graph size do not grow with the layer count, and the compiler's
``-sub-functions`` sees the repetition.

Everything is traced on the meta device: the returned model's initializers hold no data. ``params`` maps each
initializer name to the parameter it comes from, so the weights can be written afterwards straight from the
checkpoint (``external_data.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.export import Dim

LAYER_DOMAIN = "optimum_qaic_moe.layers"
ACTIVATIONS = ("hidden", "cos", "sin", "position_ids", "past_key", "past_value")
LAYER_OUTPUTS = ("hidden_out", "past_key_out", "past_value_out")


@torch.library.custom_op("qaic_export::decoder_layer", mutates_args=())
def _decoder_layer(
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    layer: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raise RuntimeError("qaic_export::decoder_layer only marks a layer while tracing the export")


@_decoder_layer.register_fake
def _(hidden, cos, sin, position_ids, past_k, past_v, layer):
    return torch.empty_like(hidden), torch.empty_like(past_k), torch.empty_like(past_v)


class LayerCall(nn.Module):
    """Stands for decoder layer ``index`` in the traced top-level graph."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, hidden, cos, sin, position_ids, past_k, past_v):
        return torch.ops.qaic_export.decoder_layer(hidden, cos, sin, position_ids, past_k, past_v, self.index)


def _layer_translation():
    import onnx
    from onnxscript import values

    fp = onnx.defs.OpSchema.FormalParameter
    schema = onnx.defs.OpSchema(
        "DecoderLayer",
        LAYER_DOMAIN,
        1,
        "placeholder for a decoder layer",
        inputs=[fp(n, "T" if n != "position_ids" else "I") for n in ACTIVATIONS],
        outputs=[fp(n, "T") for n in LAYER_OUTPUTS],
        type_constraints=[("T", ["tensor(float)"], ""), ("I", ["tensor(int64)"], "")],
        attributes=[onnx.defs.OpSchema.Attribute("layer", onnx.defs.OpSchema.AttrType.INT, "layer index")],
    )
    op = values.Op(values.Opset(LAYER_DOMAIN, 1), "DecoderLayer", schema)

    def decoder_layer(hidden, cos, sin, position_ids, past_k, past_v, layer: int):
        return op(hidden, cos, sin, position_ids, past_k, past_v, layer=layer)

    return {torch.ops.qaic_export.decoder_layer.default: decoder_layer}


class _OneLayer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden, cos, sin, position_ids, past_k, past_v):
        return self.layer(hidden, cos, sin, position_ids, past_k, past_v)


@dataclass
class TracedGraph:
    model: object  # onnx_ir.Model, initializers without data
    params: dict[str, torch.Tensor]  # initializer name -> parameter it holds


def _dim(name: str, example: int) -> Dim:
    from torch.export import Dim

    return Dim(name, min=1 if example > 1 else 2, max=1 << 24)


def _export(module, args, dynamic_shapes, opset: int, extra_table: dict | None = None):
    from ..ops import translation_table
    from .onnx_export import quiet_export

    table = translation_table()
    table.update(extra_table or {})
    return quiet_export(module, args, opset=opset, dynamic_shapes=dynamic_shapes, custom_translation_table=table)


def trace(graph, example_args, cache_dims: Sequence[dict[int, str]], opset: int, progress=None) -> TracedGraph:
    """Trace ``graph`` (a CausalLMGraph on the meta device) with example ``(input_ids, position_ids, past)``;
    ``cache_dims[i]``: {axis: symbolic dim name} of layer i's cache; a ``batch_size`` dim there makes the batch
    symbolic everywhere."""
    from .onnx_export import attach_functions

    input_ids, position_ids, past = example_args
    dims: dict[str, Dim] = {}  # one per name
    cache_dyn = []
    for i, d in enumerate(cache_dims):
        spec = {axis: dims.setdefault(name, _dim(name, past[2 * i].shape[axis])) for axis, name in d.items()}
        cache_dyn += [spec, spec]
    batch = {0: dims["batch_size"]} if "batch_size" in dims else None
    skeleton = graph.with_layers([LayerCall(i) for i in range(len(graph.layers))])
    if progress:
        progress("trace the top-level graph")
    program = _export(skeleton, example_args, (batch, batch, cache_dyn), opset, _layer_translation())
    model = program.model
    params = _initializer_params(model, skeleton)

    functions = {}  # kind -> (function name, weight names)
    hidden, cos, sin = _layer_example_inputs(graph, input_ids, position_ids)
    for i, (layer, kind) in enumerate(zip(graph.layers, graph.layer_kinds)):
        if kind in functions:
            continue
        if progress:
            progress(f"trace decoder layer {i} (kind {kind})")
        layer_args = (hidden, cos, sin, position_ids, past[2 * i], past[2 * i + 1])
        layer_dyn = (batch, batch, batch, batch, cache_dyn[2 * i], cache_dyn[2 * i + 1])
        layer_program = _export(_OneLayer(layer).eval(), layer_args, layer_dyn, opset)
        functions[kind] = _to_function(layer_program.model, model, f"DecoderLayer_{kind}", _OneLayer(layer))
    _call_functions(model, graph, functions, params)
    attach_functions(model)
    return TracedGraph(model, params)


def move_data_off(graph: nn.Module) -> dict[int, torch.Tensor]:
    """Put the parameters that hold data (computed at build time, e.g. RoPE tables) on the meta device, like the
    rest, for tracing; return ``{id(new meta parameter): data}`` for writing them later."""
    own = {}
    for module in graph.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and not p.is_meta:
                meta = nn.Parameter(p.detach().to("meta"), requires_grad=False)
                module._parameters[name] = meta
                own[id(meta)] = p.detach()
    return own


def _layer_example_inputs(graph, input_ids, position_ids):
    with torch.no_grad():
        hidden = torch.nn.functional.embedding(input_ids, graph.embed)
        cos, sin = graph.rope(position_ids)
    return hidden, cos, sin


def _initializer_params(model, module: nn.Module) -> dict[str, torch.Tensor]:
    """{initializer name: parameter} for the initializers that are parameters of module (the others are constants
    the exporter lifted, with their data)."""
    named = dict(module.named_parameters(remove_duplicate=False))
    return {name: named[name] for name in model.graph.initializers if name in named}


def _to_function(layer_model, model, name: str, module: nn.Module):
    """Turn a traced layer into a function of ``model``: its graph becomes the function body, its weights become
    inputs after the activations, lifted constants become Constant nodes. Returns (name, weight names)."""
    import onnx_ir as ir

    g = layer_model.graph
    named = dict(module.named_parameters(remove_duplicate=False))
    weights = sorted(n for n in g.initializers if n in named)
    for const_name in [n for n in g.initializers if n not in named]:
        value = g.initializers.pop(const_name)
        const = ir.node("Constant", [], attributes={"value": value.const_value})
        g.insert_before(g.node(0), const)
        value.replace_all_uses_with(const.outputs[0], replace_graph_outputs=True)
    weight_values = [g.initializers.pop(n) for n in weights]
    for value, new_name in zip(list(g.inputs) + weight_values, list(ACTIVATIONS) + weights):
        value.name = new_name
    g.inputs.extend(weight_values)
    for value, new_name in zip(g.outputs, LAYER_OUTPUTS):
        value.name = new_name
    function = ir.Function(LAYER_DOMAIN, name, graph=g, attributes=[])
    model.functions[function.identifier()] = function
    for key, f in layer_model.functions.items():  # the custom-op bodies the layer uses
        model.functions.setdefault(key, f)
    for domain, version in g.opset_imports.items():
        model.opset_imports.setdefault(domain, version)
    return name, [n[len("layer.") :] for n in weights]


def _not_written():
    raise RuntimeError("weights are written by external_data.write_weights, not read from the traced model")


def _call_functions(model, graph, functions, params) -> None:
    """Replace each placeholder node by a call of its kind's function, with that layer's weights as initializers."""
    import onnx_ir as ir

    for node in [n for n in model.graph if n.domain == LAYER_DOMAIN and n.op_type == "DecoderLayer"]:
        index = node.attributes["layer"].as_int()
        func_name, weight_names = functions[graph.layer_kinds[index]]
        layer_params = dict(graph.layers[index].named_parameters(remove_duplicate=False))
        weights = []
        for w in weight_names:
            full, p = f"layers.{index}.{w}", layer_params[w]
            shape = ir.Shape(list(p.shape))
            value = ir.Value(
                name=full,
                shape=shape,
                type=ir.TensorType(ir.DataType.FLOAT),
                const_value=ir.LazyTensor(_not_written, ir.DataType.FLOAT, shape, name=full),
            )
            model.graph.register_initializer(value)
            params[full] = p
            weights.append(value)
        call = ir.node(func_name, list(node.inputs) + weights, domain=LAYER_DOMAIN, num_outputs=len(LAYER_OUTPUTS))
        model.graph.insert_before(node, call)
        for old, new in zip(node.outputs, call.outputs):
            new.shape, new.type = old.shape, old.type
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            new.name = old.name
        model.graph.remove(node, safe=True)
    model.opset_imports[LAYER_DOMAIN] = 1
