"""The export pipeline behind `optimum-cli export qaic` and ``QAICModelForCausalLM.from_pretrained(export=True)``:

load -> rewrite (architecture plugin) -> export each graph (export config + custom ops) -> verify in
onnxruntime -> compile (backend plugin). Everything is built in a staging directory next to the output and
moved into place only when complete, so a failed or interrupted export leaves nothing that looks finished.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager

from ..settings import ExportSettings, UserError
from . import publish

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja", "added_tokens.json")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def stage(name: str):
    t0 = time.perf_counter()
    say(f"[qaic] {name} ...")
    yield
    say(f"[qaic] {name}: done in {time.perf_counter() - t0:.1f} s")


def read_model_type(model_dir: str) -> str:
    with open(os.path.join(model_dir, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if not model_type:
        raise UserError(f"{model_dir}/config.json has no model_type: is this a transformers checkpoint?")
    return model_type


def resolve_architecture(model_type: str):
    from ..plugins import get_architectures, get_export_configs

    architectures = get_architectures()
    configs = get_export_configs()
    if model_type not in architectures or model_type not in configs:
        known = ", ".join(sorted(architectures))
        raise UserError(f"unsupported model_type {model_type!r}: supported are {known} "
                        "(a plugin can add more, see the README)")
    return architectures[model_type], configs[model_type]


def load_model(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except Exception as e:  # transformers, safetensors and torch each raise their own types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load a causal LM from {model_dir}: {first}") from e
    return model.eval()


def graph_plan(settings: ExportSettings):
    """[(graph name, seq_len, MoE dispatch)] for the graphs this export writes."""
    from ..moe.block import MoEDispatchConfig

    plan = []
    for graph in settings.graphs:
        if graph == "prefill":
            dispatch = MoEDispatchConfig(settings.moe_prefill_dispatch, settings.num_cores,
                                         settings.moe_prefill_packed_chunk_size)
            plan.append((graph, settings.prefill_seq_len, dispatch))
        else:
            plan.append((graph, 1, MoEDispatchConfig("gathered", settings.num_cores, 1)))
    return plan


def export_graph(hf_model, arch, export_config, settings: ExportSettings, graph: str, seq_len: int, dispatch,
                 graph_dir: str) -> None:
    import torch

    from .onnx_export import export_onnx

    os.makedirs(graph_dir, exist_ok=True)
    qaic_model = arch.qaic_model(hf_model, dispatch, settings.ctx_len).eval()
    args = export_config.example_inputs(settings.batch_size, seq_len, qaic_model.cache_lengths)
    with torch.no_grad():
        export_onnx(qaic_model, args, os.path.join(graph_dir, "model.onnx"), list(export_config.inputs),
                    list(export_config.outputs), opset=settings.opset,
                    progress=lambda step: say(f"[qaic]   {graph}: {step}"))
    export_config.write_specializations(os.path.join(graph_dir, "specializations.json"), settings.batch_size,
                                        seq_len, settings.ctx_len)
    export_config.write_custom_io(os.path.join(graph_dir, "custom_io.yaml"), settings.mxint8_kv_cache)


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("optimum-qaic-moe", "torch", "transformers", "optimum", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_side_files(hf_model, model_dir: str, staging: str, settings: ExportSettings, export_config,
                     cache_lengths) -> None:
    hf_model.config.save_pretrained(staging)
    if hf_model.generation_config is not None:
        hf_model.generation_config.save_pretrained(staging)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(model_dir, name)):
            shutil.copy2(os.path.join(model_dir, name), staging)
    cache_shapes = {}
    for i, length in enumerate(cache_lengths):
        shape = list(export_config.cache_shape(settings.batch_size, length))
        cache_shapes[f"past_key.{i}"] = shape
        cache_shapes[f"past_value.{i}"] = shape
    meta = {
        "model_type": hf_model.config.model_type,
        "graphs": list(settings.graphs),
        "settings": {k: v for k, v in settings.to_dict().items() if k not in ("output", "extra")},
        "source_model": os.path.abspath(model_dir),
        "cache_shapes": cache_shapes,
        "pad_token_id": hf_model.config.pad_token_id,
        "versions": package_versions(),
    }
    meta["files"] = sorted(publish.export_files(staging) | {publish.CONFIG_NAME})  # what a re-export may replace
    with open(os.path.join(staging, "qaic_config.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def main_export(settings: ExportSettings) -> str:
    """Export (and verify, and compile when asked) one checkpoint. Returns the output directory."""
    settings.validate()
    model_type = read_model_type(settings.model)
    arch, export_config_cls = resolve_architecture(model_type)

    from .. import compiler  # resolves the compile backend before the long work, so a demand fails fast

    backend = compiler.resolve_backend(settings)
    target = publish.prepare(settings.output or ".", settings.overwrite)
    staging = target.staging
    try:
        with stage(f"load {model_type} from {settings.model}"):
            hf_model = load_model(settings.model)
        export_config = export_config_cls(hf_model.config, task=settings.task)
        cache_lengths = arch.cache_lengths(hf_model.config, settings.ctx_len)
        for graph, seq_len, dispatch in graph_plan(settings):
            with stage(f"export {graph} graph (seq_len {seq_len}, MoE {dispatch.dispatch}"
                       + (f", {settings.num_cores} cores, chunk {settings.moe_prefill_packed_chunk_size})"
                          if dispatch.dispatch == "blocked" else ")")):
                export_graph(hf_model, arch, export_config, settings, graph, seq_len, dispatch,
                             os.path.join(staging, graph))
        commands = compiler.write_compile_files(staging, settings, backend)
        write_side_files(hf_model, settings.model, staging, settings, export_config, cache_lengths)
        if settings.verify:
            from .verify import reference_run, verify_export

            with stage("verify in onnxruntime against transformers"):
                reference = reference_run(hf_model, settings)
                del hf_model  # onnxruntime loads the graphs next: do not hold both in memory
                gc.collect()
                verify_export(staging, reference, say)
        publish.publish(target, settings.overwrite)
    except OSError as e:  # disk full, permissions, ...: the user's environment, not a bug
        publish.discard(target)
        where = f" ({e.filename})" if e.filename else ""
        raise UserError(f"could not write the export: {e.strerror or e}{where}") from e
    except BaseException:
        publish.discard(target)
        raise
    output = target.output
    say(f"[qaic] wrote {output}")
    compiler.compile_export(output, settings, backend, commands, say=say)
    return output
