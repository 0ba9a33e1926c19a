"""ONNX export driver: torch.export-based exporter + QAIC custom-op functions + post-export checks.

``export_onnx`` exports with ``torch.onnx.export(..., dynamo=True)``. QAIC custom ops (``torch.ops.qaic.*``)
are translated to bare nodes in domain ``com.qualcomm.cloud`` (a translation that is an onnxscript function
with a body would be inlined by the exporter); their ONNX function bodies are attached to the model
afterwards, so the QAIC compiler sees the custom op while onnxruntime runs the body.

The file is written atomically: everything is written into a temporary directory next to ``output_path``,
checked there (``check_onnx``), and only then moved into place with ``os.replace``. On any failure nothing
is left at ``output_path`` (a previous file there is left untouched).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..logging import size
from ..settings import QAICError

__all__ = ["ExportCheckError", "export_onnx", "check_onnx", "EXTERNAL_DATA_THRESHOLD"]

# Initializer bytes above which weights go to one external file `<name>.data` next to the model. The
# protobuf limit is 2 GiB for the whole ModelProto; torch uses the same 1.5 GiB margin.
EXTERNAL_DATA_THRESHOLD = 1536 * 1024 * 1024

# Loggers that print harmless noise while the exporter builds its registry (e.g. "torchvision is not
# installed. Skipping torchvision::nms").
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",)


class ExportCheckError(QAICError, RuntimeError):
    """The ONNX export failed, or the exported model failed a post-export check."""


# --------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------


def _iter_nodes(graph) -> Iterable[Any]:
    """All NodeProtos of a GraphProto, including those in subgraphs (If/Loop/Scan bodies)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_nodes(g)


def _check_custom_functions(model) -> None:
    from optimum_qaic_moe.ops import FUNCTION_DOMAINS

    functions = {(f.domain, f.name) for f in model.functions}
    nodes = list(_iter_nodes(model.graph))
    for f in model.functions:
        nodes.extend(f.node)
    missing = sorted(
        {
            f"{n.domain}::{n.op_type}"
            for n in nodes
            if n.domain in FUNCTION_DOMAINS and (n.domain, n.op_type) not in functions
        }
    )
    if missing:
        raise ExportCheckError(f"nodes without a matching function in model.functions: {missing}")
    versions = {o.domain: o.version for o in model.opset_import}
    for domain in {n.domain for n in nodes} & set(FUNCTION_DOMAINS):
        if versions.get(domain) != FUNCTION_DOMAINS[domain]:
            raise ExportCheckError(
                f"model uses domain {domain} but opset_import has version "
                f"{versions.get(domain)!r}, expected {FUNCTION_DOMAINS[domain]}"
            )


def check_onnx(path) -> None:
    """Post-export checks; raise ExportCheckError on the first failure.

    1. ``onnx.checker.check_model(path, full_check=True)`` (path based, so external data and >2 GB work);
    2. every node in domain com.qualcomm.cloud has a matching function in ``model.functions`` and the
       domain is imported at version 1;
    3. onnxruntime loads the model with the CPU execution provider.
    """
    import onnx

    path = pathlib.Path(path)
    if not path.is_file():
        raise ExportCheckError(f"{path}: no such file")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # ValidationError, InferenceError, ...
        raise ExportCheckError(f"{path}: onnx.checker.check_model(full_check=True) failed: {e}") from e

    model = onnx.load(str(path), load_external_data=False)
    _check_custom_functions(model)
    del model

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only; warnings about unused initializers etc. are noise here
    # Loading is the check; graph optimizations (constant folding, weight pre-packing) would only add
    # memory: measured on a 1.03 GiB model, the load peaked at +1.1 GiB without them and +2.7 GiB with.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportCheckError(f"{path}: onnxruntime failed to load the model: {e}") from e


# --------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's registry noise and stdout; yields the captured stdout buffer."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            # torch.export internals; not actionable for users of this package.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec.*")
            # Emitted when several inputs share a torch.export.Dim: expected, not a problem.
            warnings.filterwarnings("ignore", category=UserWarning, message=r"# The axis name: .* will not be used")
            yield buf
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _summarize(exc: BaseException, limit: int = 4000) -> str:
    """The useful part of a torch.onnx exporter error: its '## Exception summary' section if present."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "## Exception summary" in msg:
        msg = msg.split("## Exception summary", 1)[1].split("(Refer to the full stack trace", 1)[0]
    msg = msg.strip()
    if len(msg) > limit:
        msg = msg[:limit] + " ..."
    return f"{type(exc).__name__}: {msg}"


def quiet_export(
    module,
    args: tuple,
    *,
    opset: int,
    dynamic_shapes=None,
    custom_translation_table=None,
    kwargs: dict | None = None,
    optimize: bool = False,
):
    """``torch.onnx.export(..., dynamo=True)`` without its console noise; failures become ExportCheckError with the
    exporter's own summary."""
    import torch

    with _quiet() as captured:
        try:
            return torch.onnx.export(
                module,
                tuple(args),
                kwargs=kwargs,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=custom_translation_table,
                optimize=optimize,
                verbose=False,
                report=False,
            )
        except Exception as e:
            out = captured.getvalue().strip()
            raise ExportCheckError(
                f"torch.onnx.export(dynamo=True) failed for {type(module).__name__}: {_summarize(e)}"
                + (f"\nexporter output:\n{out}" if out else "")
            ) from e


def attach_functions(model) -> list[str]:
    """Attach the function bodies of the custom ops used in the (onnx_ir) model; return their names."""
    import onnx_ir as ir

    from optimum_qaic_moe.ops import FUNCTION_DOMAINS, onnx_functions

    used = set()
    for graph in [model.graph] + [f.graph for f in model.functions.values()]:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if node.domain in FUNCTION_DOMAINS:
                used.add((node.domain, node.op_type))
    if not used:
        return []
    opset = model.opset_imports.get("", None)
    if opset is None:
        raise ExportCheckError("exported model has no default-domain opset import")
    bodies = {(f.domain, f.name): f for f in onnx_functions(opset)}
    unknown = sorted(f"{d}::{n}" for d, n in used - set(bodies))
    if unknown:
        raise ExportCheckError(f"unknown op(s) {unknown} in exported graph")
    for key in sorted(used):
        func = ir.serde.deserialize_function(bodies[key])
        model.functions[func.identifier()] = func
        model.opset_imports[key[0]] = FUNCTION_DOMAINS[key[0]]
    return sorted(name for _, name in used)


def apply_io_names(model, input_names, output_names) -> None:
    """Give the graph inputs/outputs exactly the requested names.

    Done here rather than by the exporter: with ``optimize=False`` the exporter renames a graph *input*
    when the same value is also returned as an output (measured: inputs became ['x_out', 'y']). Outputs that
    are graph inputs, initializers, or repeat an earlier output get their own Identity node first.
    """
    import onnx_ir as ir

    graph = model.graph
    if input_names is not None and len(input_names) != len(graph.inputs):
        raise ExportCheckError(
            f"{len(input_names)} input_names given but the exported graph has {len(graph.inputs)} inputs "
            f"({[v.name for v in graph.inputs]})"
        )
    if output_names is not None and len(output_names) != len(graph.outputs):
        raise ExportCheckError(
            f"{len(output_names)} output_names given but the exported graph has {len(graph.outputs)} outputs "
            f"({[v.name for v in graph.outputs]})"
        )
    for names in (input_names, output_names):
        if names is not None and len(set(names)) != len(names):
            raise ExportCheckError(f"duplicate names in {list(names)}")

    if output_names is not None:
        special = set(graph.inputs) | set(graph.initializers.values())
        seen = set()
        for i, value in enumerate(list(graph.outputs)):
            if value in special or value in seen:
                node = ir.node("Identity", [value])
                node.outputs[0].type = value.type
                node.outputs[0].shape = value.shape
                graph.append(node)
                graph.outputs[i] = node.outputs[0]
                value = node.outputs[0]
            seen.add(value)

    targets: dict[str, ir.Value] = {}
    if input_names is not None:
        targets.update(zip(input_names, graph.inputs))
    if output_names is not None:
        if set(targets) & set(output_names):
            raise ExportCheckError(f"input_names and output_names overlap: {sorted(set(targets) & set(output_names))}")
        targets.update(zip(output_names, graph.outputs))
    if not targets:
        return
    # Move any other value already using a target name out of the way, then rename.
    wanted = set(targets.values())
    taken = {v.name for v in graph.inputs} | set(graph.initializers)
    values = list(graph.inputs) + list(graph.initializers.values())
    for node in ir.traversal.RecursiveGraphIterator(graph):
        values.extend(node.outputs)
        taken.update(v.name for v in node.outputs)
    counter = 0
    for value in values:
        if value.name in targets and value not in wanted:
            while f"{value.name}__{counter}" in taken or f"{value.name}__{counter}" in targets:
                counter += 1
            new = f"{value.name}__{counter}"
            taken.add(new)
            value.name = new  # onnx_ir keeps graph.initializers keyed consistently
    for name, value in targets.items():
        value.name = name


def _check_io_names(model, input_names, output_names) -> None:
    got_in = [v.name for v in model.graph.inputs]
    got_out = [v.name for v in model.graph.outputs]
    if input_names is not None and got_in != list(input_names):
        raise ExportCheckError(f"exported graph inputs {got_in} != requested input_names {list(input_names)}")
    if output_names is not None and got_out != list(output_names):
        raise ExportCheckError(f"exported graph outputs {got_out} != requested output_names {list(output_names)}")


def _initializer_bytes(model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def export_onnx(
    module,
    args: tuple,
    output_path,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    opset: int = 18,
    dynamic_shapes=None,
    *,
    kwargs: dict | None = None,
    optimize: bool = True,
    external_data: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> pathlib.Path:
    """Export ``module(*args, **kwargs)`` to ONNX at ``output_path`` and check it; return the path.

    - ``input_names`` / ``output_names`` name the graph inputs/outputs in order (flattened); checked after
      export. ``dynamic_shapes`` is passed to ``torch.onnx.export`` as is (torch.export format: a tuple
      aligned with ``args`` or a dict keyed by ``forward`` argument names, values ``{dim: torch.export.Dim}``
      or ``{dim: "name"}``).
    - ``opset``: default-domain opset (14..23); the QAIC function bodies use the model's actual opset.
    - ``external_data``: None = automatic (weights in ``<name>.data`` when initializers exceed
      ``EXTERNAL_DATA_THRESHOLD``), True/False forces.
    - The module is put in eval mode for the export and restored afterwards.
    - ``progress``, when given, is called with a short line as each step (trace, save, check) starts: the
      steps of a large model take minutes each.

    Raises ExportCheckError if the export or any check fails; nothing is then left at ``output_path``.
    """
    import onnx_ir as ir

    from optimum_qaic_moe.ops import translation_table

    output_path = pathlib.Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    data_name = output_path.name + ".data"

    was_training = getattr(module, "training", None)
    if was_training:
        module.eval()
    try:
        if progress:
            progress("trace and convert to ONNX")
        program = quiet_export(
            module,
            args,
            kwargs=kwargs,
            opset=opset,
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=translation_table(),
            optimize=optimize,
        )
    finally:
        if was_training:
            module.train(True)

    model = program.model
    apply_io_names(model, input_names, output_names)
    _check_io_names(model, input_names, output_names)
    attach_functions(model)

    if external_data is None:
        external_data = _initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD

    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{output_path.name}.tmp-", dir=output_path.parent))
    try:
        tmp_model = tmpdir / output_path.name
        if progress:
            nbytes = _initializer_bytes(model)
            progress(f"save ({size(nbytes)} of weights" + (", external data)" if external_data else ")"))
        try:
            if external_data:
                ir.save(model, tmp_model, external_data=data_name)
            else:
                ir.save(model, tmp_model)
        except OSError:
            raise  # disk full, permissions: the caller reports the user's environment
        except Exception as e:
            raise ExportCheckError(f"saving the exported model failed: {type(e).__name__}: {e}") from e
        del program, model
        if progress:
            progress("check (onnx.checker full_check, QAIC functions, onnxruntime load)")
        check_onnx(tmp_model)
        # Move into place: data first, so the model never points at a missing/stale data file.
        tmp_data = tmpdir / data_name
        final_data = output_path.parent / data_name
        if tmp_data.exists():
            os.replace(tmp_data, final_data)
        os.replace(tmp_model, output_path)
        if not external_data and final_data.exists():
            final_data.unlink()  # stale weights of an earlier external-data export at this path
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return output_path
