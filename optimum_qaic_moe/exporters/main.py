"""The export pipeline behind `optimum-cli export qaic` and ``QAICModelForCausalLM.from_pretrained(export=True)``:

config -> the transformers model on the meta device -> the QAIC graph modules (architecture plugin) -> trace each
graph (decoder layers as ONNX functions) -> write every weight once, straight from the checkpoint, into one file
both graphs share -> check -> verify in onnxruntime (fp32 and fp16) against transformers -> compile (backend
plugin). No step holds the model's weights in memory: tracing sees only shapes, and the weights move from the
checkpoint to the data file one block at a time.

Everything is built in a staging directory on the output's filesystem and swapped into place only when complete
(``publish.py``), so a failed or interrupted export leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..logging import Steps, info, size, stage
from ..settings import ExportSettings, UserError
from ..sources import EXPERT_COUNT_FIELDS, read_model_config, resolve_model_dir, save_tokenizer
from . import publish

if TYPE_CHECKING:
    from ..moe.block import MoEDispatchConfig

PREFILL, DECODE = "prefill", "decode"


def graph_file(export_dir: str, graph: str) -> str:
    """Where a graph of an export lives (next to the weights file it shares)."""
    return os.path.join(export_dir, f"{graph}.onnx")


# -- the model -------------------------------------------------------------------------------------------------


def read_model_type(model_dir: str) -> str:
    return read_model_config(model_dir)["model_type"]  # checked: a JSON object with a model_type string


def resolve_architecture(model_type: str):
    from ..plugins import get_architectures

    architectures = get_architectures()
    if model_type not in architectures:
        known = ", ".join(sorted(architectures))
        raise UserError(
            f"unsupported model_type {model_type!r}: supported are {known} (a plugin can add more, see the README)"
        )
    return architectures[model_type]


def load_config(model_dir: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises ValueError, OSError, KeyError ... for a bad config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not read the config of {model_dir}: {first}") from e


def open_weights(model_dir: str, config):
    """The transformers model of ``config`` on the meta device, and its weights read straight from the checkpoint
    (any layout the Hub or either transformers line writes; MXFP4 and bf16 to float32), checked first."""
    from ..checkpoint import HFWeights, SafetensorsCheckpoint, check_config, meta_model

    check_config(model_dir, config)
    model = meta_model(config).eval()
    weights = HFWeights(SafetensorsCheckpoint(model_dir), model)
    weights.check()
    return model, weights


# -- the graphs ------------------------------------------------------------------------------------------------


@dataclass
class GraphSpec:
    name: str
    seq_len: int
    dispatch: MoEDispatchConfig

    @property
    def decode(self) -> bool:
        return self.name == DECODE


def graph_plan(settings: ExportSettings):
    from ..moe.block import MoEDispatchConfig

    plan = []
    for graph in settings.graphs:
        if graph == PREFILL:
            from ..moe.cost import FP16_BYTES, MXFP6_BYTES

            dispatch = MoEDispatchConfig(
                settings.moe_prefill_dispatch,
                settings.num_cores,
                settings.moe_prefill_packed_chunk_size,
                weight_bytes=MXFP6_BYTES if settings.mxfp6_matmul else FP16_BYTES,
            )
            plan.append(GraphSpec(graph, settings.prefill_seq_len, dispatch))
        else:
            plan.append(GraphSpec(graph, 1, MoEDispatchConfig("gathered", settings.num_cores, 1)))
    return plan


def rope_positions(config, settings: ExportSettings) -> int:
    return max(int(getattr(config, "max_position_embeddings", 0) or 0), max(settings.ctx_lens))


def build_graph(arch, model, settings: ExportSettings, spec: GraphSpec):
    """The graph module of ``spec`` on the meta device; returns it and the data of its computed parameters (RoPE
    tables), which ``layers.move_data_off`` took off it for tracing."""
    from .layers import move_data_off

    graph = arch.graph_module(model, spec.dispatch, rope_positions(model.config, settings))
    return graph, move_data_off(graph)


def trace_graph(arch, model, settings: ExportSettings, spec: GraphSpec, graph, progress):
    """Trace one graph module (from ``build_graph``) on the meta device; returns the TracedGraph."""
    from .layers import trace

    export_config = arch.export_config(model.config, task=settings.task)
    ctx = max(settings.ctx_lens)
    lengths = arch.cache_lengths(model, ctx)
    rings = [arch.layer_window(model, i) is not None for i in range(len(lengths))]
    batch = max(2, settings.batch_size) if spec.decode else settings.batch_size  # decode: batch is symbolic
    args = export_config.example_inputs(batch, spec.seq_len, lengths, device="meta")
    traced = trace(graph, args, export_config.cache_dims(rings, spec.decode), settings.opset, progress=progress)
    from .onnx_export import apply_io_names

    apply_io_names(traced.model, export_config.input_names(), export_config.output_names())
    return traced


# What one traced graph may ask for, beyond which tracing and onnxruntime would run for minutes and grow without
# end (the README documents both):
MAX_ATTENTION_BYTES = 16 << 30  # float32 attention scores of one prefill call
MAX_UNROLLED_CHUNKS = 4096  # MoE chunk iterations the blocked prefill unrolls per layer


def check_graph_size(config, settings: ExportSettings) -> None:
    """Refuse, before any tracing, shapes whose graphs could not be traced or run in reasonable time and memory."""
    from ..moe.dispatch import BlockedPlan

    tokens = settings.batch_size * settings.prefill_seq_len
    heads = int(config.num_attention_heads)
    scores = (
        settings.batch_size * heads * settings.prefill_seq_len * (max(settings.ctx_lens) + settings.prefill_seq_len) * 4
    )
    if "prefill" in settings.graphs and scores > MAX_ATTENTION_BYTES:
        raise UserError(
            f"--prefill-seq-len {settings.prefill_seq_len} with --ctx-len {max(settings.ctx_lens)} needs "
            f"{scores / 2**30:.1f} GiB of attention scores per prefill call (batch x {heads} heads x "
            f"prefill_seq_len x (ctx_len + prefill_seq_len) x 4 bytes), above the "
            f"{MAX_ATTENTION_BYTES >> 30} GiB limit: lower --prefill-seq-len (a long prompt runs as "
            "several prefill calls) or --ctx-len"
        )
    experts = next((getattr(config, n) for n in EXPERT_COUNT_FIELDS if getattr(config, n, None)), None)
    chunk = settings.moe_prefill_packed_chunk_size
    if "prefill" in settings.graphs and settings.moe_prefill_dispatch == "blocked" and experts and chunk != "auto":
        plan = BlockedPlan.make(int(experts), settings.num_cores, chunk, tokens)
        unrolled = len(plan.slots) * plan.num_chunks
        if unrolled > MAX_UNROLLED_CHUNKS:
            raise UserError(
                f"the blocked MoE prefill would unroll {unrolled} chunks per layer ({len(plan.slots)} "
                f"expert slots x {plan.num_chunks} chunks of {plan.chunk_size} rows), above the "
                f"{MAX_UNROLLED_CHUNKS} limit: raise --moe-prefill-packed-chunk-size or --num-cores, "
                "lower --prefill-seq-len, or use --moe-prefill-dispatch grouped"
            )


def sliding_window(arch, model) -> int | None:
    """The ring length of the sliding-window layers (None when every layer attends to the whole context)."""
    windows = {arch.layer_window(model, i) for i in range(len(arch.decoder_layers(model)))} - {None}
    if len(windows) > 1:
        raise UserError(f"layers with different sliding windows {sorted(windows)} are not supported")
    return windows.pop() if windows else None


# -- side files ------------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("optimum-qaic-moe", "torch", "transformers", "optimum", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_model_files(config, model_dir: str, staging: str, trust_remote_code: bool) -> None:
    config.save_pretrained(staging)
    try:
        from transformers import GenerationConfig

        GenerationConfig.from_pretrained(model_dir).save_pretrained(staging)
    except OSError:
        pass  # no generation_config.json in the checkpoint
    save_tokenizer(model_dir, staging, trust_remote_code=trust_remote_code)


def write_qaic_config(staging: str, settings: ExportSettings, config, model_dir: str, window: int | None) -> None:
    meta = {
        "model_type": config.model_type,
        "graphs": list(settings.graphs),
        "settings": settings.recorded(),
        "ctx_lens": settings.ctx_lens,
        "sliding_window": window,
        "source_model": os.path.abspath(model_dir),
        "pad_token_id": config.pad_token_id,
        "versions": package_versions(),
    }
    meta["files"] = sorted(publish.export_files(staging) | {publish.CONFIG_NAME})  # what a re-export may replace
    with open(os.path.join(staging, publish.CONFIG_NAME), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


# -- the pipeline ----------------------------------------------------------------------------------------------


def run_export(settings: ExportSettings) -> str:
    """Export (and verify, and compile when asked) one checkpoint. Returns the output directory. The public
    entry points are ``optimum_qaic_moe.main_export`` and ``optimum-cli export qaic``."""
    settings.validate()
    model_dir = resolve_model_dir(
        settings.model, trust_remote_code=settings.trust_remote_code, **settings.loading_options
    )
    arch = resolve_architecture(read_model_type(model_dir))

    from .. import compiler  # resolves the compile backend before the long work, so a demand fails fast

    backend = compiler.resolve_backend(settings)
    target = publish.prepare(settings.output or ".", settings.overwrite)
    try:
        commands = _export_into(target.staging, settings, model_dir, arch, backend)
        publish.publish(target, settings.overwrite)
    except OSError as e:  # disk full, permissions, ...: the user's environment, not a bug
        publish.discard(target)
        where = f" ({e.filename})" if e.filename else ""
        raise UserError(f"could not write the export: {e.strerror or e}{where}") from e
    except BaseException:
        publish.discard(target)
        raise
    output = target.output
    info(f"wrote {output}")
    compiler.compile_export(output, settings, backend, commands)
    return output


def _export_into(staging: str, settings: ExportSettings, model_dir: str, arch, backend):
    from .. import compiler
    from ..logging import progress
    from ..tensors import WeightWriter
    from .external_data import FORK, lay_out, point_graphs, save_graph, write_in_background
    from .onnx_export import check_onnx

    config = load_config(model_dir, settings.trust_remote_code)
    check_graph_size(config, settings)
    with stage(f"check the {config.model_type} checkpoint {model_dir}"):
        model, source = open_weights(model_dir, config)
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    window = sliding_window(arch, model)
    plan = graph_plan(settings)
    modules = [build_graph(arch, model, settings, spec) for spec in plan]
    graphs = [graph for graph, _ in modules]
    own = {key: data for _, graph_own in modules for key, data in graph_own.items()}
    weights = lay_out(graphs)
    kinds = {arch.layer_kind(model, i) for i in range(len(arch.decoder_layers(model)))}
    traced = []
    where = "in a process of their own" if FORK else "before tracing"
    info(f"write the weights ({size(weights.size)} in weights.data, shared by the graphs) {where}")
    with write_in_background(staging, weights, WeightWriter(names, source.read, own)) as writing:
        for spec, graph in zip(plan, graphs):
            with (
                stage(f"trace the {spec.name} graph ({describe(spec, settings)})"),
                Steps(total=1 + len(kinds), desc=spec.name) as steps,
            ):  # the top-level graph, one layer per kind
                traced.append(trace_graph(arch, model, settings, spec, graph, steps))
        point_graphs(traced, graphs, weights)
        export_config = arch.export_config(config, task=settings.task)
        for spec, traced_graph in zip(plan, traced):
            path = graph_file(staging, spec.name)
            save_graph(traced_graph.model, path)
            # The checks look at the graph, not at the weights' values, so they run while the write goes on.
            with stage(f"check the {spec.name} graph (onnx checker, custom-op functions, onnxruntime load)"):
                check_onnx(path)
            side = os.path.join(staging, spec.name)
            os.makedirs(side, exist_ok=True)
            export_config.write_specializations(
                os.path.join(side, "specializations.json"), settings.batch_size, settings.ctx_lens, window, spec.decode
            )
            export_config.write_custom_io(os.path.join(side, "custom_io.yaml"), settings.mxint8_kv_cache)
        if writing is not None:
            with stage("finish writing the weights"):
                bar = progress(total=weights.size >> 20, desc="weights", unit="MiB")
                writing.wait(lambda done: bar.update((done >> 20) - bar.n))
                bar.close()
    del traced, own, modules, graphs, weights
    write_model_files(config, model_dir, staging, settings.trust_remote_code)
    commands = compiler.write_compile_files(staging, settings, backend)
    write_qaic_config(staging, settings, config, model_dir, window)
    if settings.verify:
        from .verify import verify_export

        with stage("verify in onnxruntime (fp32 and fp16) against transformers"):
            verify_export(staging, model, source, settings)
    return commands


def describe(spec: GraphSpec, settings: ExportSettings) -> str:
    d = spec.dispatch
    text = f"seq_len {spec.seq_len}, MoE {d.algorithm}"
    if d.algorithm == "blocked":
        text += f", {d.num_cores} cores, chunk {d.chunk_size}"
    elif d.algorithm == "grouped":
        text += f", tiles of {d.chunk_size} rows"
    return text
