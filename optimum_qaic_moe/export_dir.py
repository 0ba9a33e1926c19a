"""Reading an export directory without trusting it: ``qaic_config.json`` checked against its schema, and the
shapes it states checked against the graphs themselves.

An export may have been copied, edited or downloaded from anywhere. Before the runtime reads it, every field it
uses is type-checked (an error names the file and the field), only the package's own graph names are accepted
(a ``graphs`` entry ``../x`` would load a graph from outside the export), and the batch size, prefill length and
KV-cache shapes must be the ones the ONNX graphs were exported with: a raised ``ctx_len`` in the json would
otherwise run the graphs on caches of the wrong size.
"""

from __future__ import annotations

import json
import os
import re

from .settings import ExportSettings, UserError

CONFIG_NAME = "qaic_config.json"
KNOWN_GRAPHS = ("prefill", "decode")
CACHE_NAME = re.compile(r"past_(key|value)\.\d+")

Dim = int | str  # a symbolic dimension is its name


def read_export_config(export_dir: str) -> dict:
    """``qaic_config.json`` of ``export_dir``, validated against the schema and the graphs."""
    path = os.path.join(export_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise UserError(f"{export_dir} is not a QAIC export (no {CONFIG_NAME}): pass export=True to export a "
                        "transformers checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({getattr(e, 'msg', e)}): the export is damaged; export "
                        "again") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} holds a JSON {type(meta).__name__}, not an object: the export is damaged")
    check_schema(meta, path)
    check_against_graphs(meta, export_dir, path)
    return meta


def check_schema(meta: dict, path: str) -> None:
    def bad(field: str, wanted: str):
        raise UserError(f"{path}: {field} must be {wanted}, got {_short(meta.get(field, '<missing>'))}: the "
                        "file was edited or is damaged; export again")

    if not isinstance(meta.get("model_type"), str) or not meta["model_type"]:
        bad("model_type", "a model type string")
    graphs = meta.get("graphs")
    if not isinstance(graphs, list) or not graphs or len(set(map(repr, graphs))) != len(graphs):
        bad("graphs", f"a non-empty list of distinct graph names ({', '.join(KNOWN_GRAPHS)})")
    for graph in graphs:
        if graph not in KNOWN_GRAPHS:
            raise UserError(f"{path}: graphs entry {_short(graph)} is not a graph of a QAIC export (known: "
                            f"{', '.join(KNOWN_GRAPHS)}): refusing to load it")
    settings = meta.get("settings")
    if not isinstance(settings, dict):
        bad("settings", "an object")
    for name in ("batch_size", "prefill_seq_len", "ctx_len"):  # what the runtime reads
        if name not in settings:
            raise UserError(f"{path}: settings.{name} is missing: the export is damaged; export again")
    ExportSettings.from_record(settings, path)  # every recorded option has its field's type
    for name in ("batch_size", "prefill_seq_len", "ctx_len"):
        if settings[name] < 1:
            raise UserError(f"{path}: settings.{name} must be a positive integer, got {settings[name]!r}")
    shapes = meta.get("cache_shapes")
    if not isinstance(shapes, dict) or not shapes:
        bad("cache_shapes", "an object mapping past_key.i / past_value.i to shapes")
    for name, shape in shapes.items():
        if not CACHE_NAME.fullmatch(name) or not _is_shape(shape):
            raise UserError(f"{path}: cache_shapes entry {_short(name)}: {_short(shape)} is not a KV cache name "
                            "with a shape of 4 positive integers: the export is damaged; export again")
    pad = meta.get("pad_token_id")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 0):
        bad("pad_token_id", "null or a token id >= 0")


def check_against_graphs(meta: dict, export_dir: str, path: str) -> None:
    """The shapes ``qaic_config.json`` states must be the graphs' own (the graphs are what runs)."""
    settings, shapes = meta["settings"], meta["cache_shapes"]
    for graph in meta["graphs"]:
        onnx_path = os.path.join(export_dir, graph, "model.onnx")
        if not os.path.isfile(onnx_path):
            raise UserError(f"{path} lists the {graph} graph but {onnx_path} does not exist: the export is "
                            "incomplete; export again")
        inputs = graph_inputs(onnx_path)
        seq_len = settings["prefill_seq_len"] if graph == "prefill" else 1
        _expect(path, "settings.batch_size", settings["batch_size"], inputs, "input_ids", 0, onnx_path)
        _expect(path, "settings.prefill_seq_len" if graph == "prefill" else "the decode length 1", seq_len,
                inputs, "input_ids", 1, onnx_path)
        graph_caches = sorted(n for n in inputs if CACHE_NAME.fullmatch(n))
        if graph_caches != sorted(shapes):
            raise UserError(f"{path}: cache_shapes names {len(shapes)} caches but {onnx_path} takes "
                            f"{len(graph_caches)}: the file does not belong to these graphs; export again")
        for name, shape in shapes.items():
            for axis, value in enumerate(shape):
                _expect(path, f"cache_shapes[{name!r}][{axis}]", value, inputs, name, axis, onnx_path)
    longest = max(shape[2] for shape in shapes.values())
    if settings["ctx_len"] != longest:
        raise UserError(f"{path}: settings.ctx_len is {settings['ctx_len']} but the graphs' longest KV cache holds "
                        f"{longest} positions: the file was edited; export again for another ctx_len")


def graph_inputs(onnx_path: str) -> dict[str, list[Dim]]:
    """{input name: dims} of an ONNX graph, read without its external weights."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    return {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def _expect(path: str, field: str, value: int, inputs: dict[str, list[Dim]], name: str, axis: int,
            onnx_path: str) -> None:
    dims = inputs.get(name)
    if dims is None or axis >= len(dims):
        raise UserError(f"{onnx_path} has no input {name} of rank > {axis}: it is not a QAIC causal-LM graph")
    if isinstance(dims[axis], int) and dims[axis] != value:  # a symbolic dim accepts any value
        raise UserError(f"{path}: {field} is {value} but {onnx_path} was exported with {dims[axis]} "
                        f"({name} axis {axis}): the file was edited or belongs to another export; export again")


def _is_shape(shape) -> bool:
    return (isinstance(shape, list) and len(shape) == 4
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
