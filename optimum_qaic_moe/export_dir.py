"""Reading an export directory without trusting it: ``qaic_config.json`` checked against its schema, and the
shapes it states checked against the graphs themselves.

An export may have been copied, edited or downloaded from anywhere. Before the runtime reads it, every field it
uses is type-checked (an error names the file and the field), only the package's own graph names are accepted
(a ``graphs`` entry ``../x`` would load a graph from outside the export), and the batch size, prefill length and
KV caches must be the ones the ONNX graphs were exported with. The context length is a symbolic dim of the
graphs, so a context the json claims is checked against what the graphs can hold: their RoPE tables' rows.
"""

from __future__ import annotations

import json
import os
import re
from typing import NoReturn

from .settings import ExportSettings, UserError

CONFIG_NAME = "qaic_config.json"
KNOWN_GRAPHS = ("prefill", "decode")
CACHE_NAME = re.compile(r"past_(key|value)\.\d+")

Dim = int | str  # a symbolic dimension is its name


def read_export_config(export_dir: str) -> dict:
    """``qaic_config.json`` of ``export_dir``, validated against the schema and the graphs."""
    path = os.path.join(export_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise UserError(
            f"{export_dir} is not a QAIC export (no {CONFIG_NAME}): pass export=True to export a "
            "transformers checkpoint"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is not valid JSON ({getattr(e, 'msg', e)}): the export is damaged; export again"
        ) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} holds a JSON {type(meta).__name__}, not an object: the export is damaged")
    check_schema(meta, path)
    check_against_graphs(meta, export_dir, path)
    return meta


def check_schema(meta: dict, path: str) -> None:
    def bad(field: str, wanted: str) -> NoReturn:
        raise UserError(
            f"{path}: {field} must be {wanted}, got {_short(meta.get(field, '<missing>'))}: the "
            "file was edited or is damaged; export again"
        )

    if not isinstance(meta.get("model_type"), str) or not meta["model_type"]:
        bad("model_type", "a model type string")
    graphs = meta.get("graphs")
    if not isinstance(graphs, list) or not graphs or len(set(map(repr, graphs))) != len(graphs):
        bad("graphs", f"a non-empty list of distinct graph names ({', '.join(KNOWN_GRAPHS)})")
    for graph in graphs:
        if graph not in KNOWN_GRAPHS:
            raise UserError(
                f"{path}: graphs entry {_short(graph)} is not a graph of a QAIC export (known: "
                f"{', '.join(KNOWN_GRAPHS)}): refusing to load it"
            )
    settings = meta.get("settings")
    if not isinstance(settings, dict):
        bad("settings", "an object")
    for name in ("batch_size", "prefill_seq_len"):  # what the runtime reads
        if name not in settings:
            raise UserError(f"{path}: settings.{name} is missing: the export is damaged; export again")
    ExportSettings.from_record(settings, path)  # every recorded option has its field's type
    for name in ("batch_size", "prefill_seq_len"):
        if settings[name] < 1:
            raise UserError(f"{path}: settings.{name} must be a positive integer, got {settings[name]!r}")
    ctx_lens = meta.get("ctx_lens")
    if (
        not isinstance(ctx_lens, list)
        or not ctx_lens
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in ctx_lens)
    ):
        bad("ctx_lens", "a non-empty list of positive integers")
    window = meta.get("sliding_window")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        bad("sliding_window", "null or a positive integer")
    pad = meta.get("pad_token_id")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 0):
        bad("pad_token_id", "null or a token id >= 0")


def check_against_graphs(meta: dict, export_dir: str, path: str) -> None:
    """The shapes ``qaic_config.json`` states must be the graphs' own (the graphs are what runs)."""
    settings = meta["settings"]
    for graph in meta["graphs"]:
        onnx_path = os.path.join(export_dir, f"{graph}.onnx")
        if not os.path.isfile(onnx_path):
            raise UserError(
                f"{path} lists the {graph} graph but {onnx_path} does not exist: the export is incomplete; export again"
            )
        inputs, positions = graph_inputs(onnx_path), rope_positions(onnx_path)
        seq_len = settings["prefill_seq_len"] if graph == "prefill" else 1
        _expect(path, "settings.batch_size", settings["batch_size"], inputs, "input_ids", 0, onnx_path)
        _expect(
            path,
            "settings.prefill_seq_len" if graph == "prefill" else "the decode length 1",
            seq_len,
            inputs,
            "input_ids",
            1,
            onnx_path,
        )
        caches = [n for n in inputs if CACHE_NAME.fullmatch(n)]
        if not caches or any(len(inputs[n]) != 4 for n in caches):
            raise UserError(f"{onnx_path} takes no KV cache of rank 4: it is not a QAIC causal-LM graph")
        if positions is not None and max(meta["ctx_lens"]) > positions:
            raise UserError(
                f"{path}: ctx_lens goes up to {max(meta['ctx_lens'])} but {onnx_path} holds RoPE tables "
                f"for {positions} positions: the file was edited; export again for that context"
            )


def rope_positions(onnx_path: str) -> int | None:
    """Rows of the graph's RoPE cos table: the positions it can serve (None when it has none)."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.name == "rope.cos":
            return int(tensor.dims[0])
    return None


def graph_inputs(onnx_path: str) -> dict[str, list[Dim]]:
    """{input name: dims} of an ONNX graph, read without its external weights."""
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    return {
        i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }


def _expect(
    path: str, field: str, value: int, inputs: dict[str, list[Dim]], name: str, axis: int, onnx_path: str
) -> None:
    dims = inputs.get(name)
    if dims is None or axis >= len(dims):
        raise UserError(f"{onnx_path} has no input {name} of rank > {axis}: it is not a QAIC causal-LM graph")
    if isinstance(dims[axis], int) and dims[axis] != value:  # a symbolic dim accepts any value
        raise UserError(
            f"{path}: {field} is {value} but {onnx_path} was exported with {dims[axis]} "
            f"({name} axis {axis}): the file was edited or belongs to another export; export again"
        )


def _is_shape(shape) -> bool:
    return (
        isinstance(shape, list)
        and len(shape) == 4
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
