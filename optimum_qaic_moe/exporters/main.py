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

from ..logging import Steps, info, stage
from ..settings import ExportSettings, UserError
from ..sources import read_model_config, resolve_model_dir, save_tokenizer


def read_model_type(model_dir: str) -> str:
    return read_model_config(model_dir)["model_type"]  # checked: a JSON object with a model_type string


def resolve_architecture(model_type: str):
    from ..plugins import get_architectures, get_export_configs

    architectures = get_architectures()
    configs = get_export_configs()
    if model_type not in architectures or model_type not in configs:
        known = ", ".join(sorted(architectures))
        raise UserError(f"unsupported model_type {model_type!r}: supported are {known} "
                        "(a plugin can add more, see the README)")
    return architectures[model_type], configs[model_type]


def load_model(model_dir: str, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
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
    with torch.no_grad(), Steps(total=3, desc=graph) as steps:  # trace, save, check
        export_onnx(qaic_model, args, os.path.join(graph_dir, "model.onnx"), list(export_config.inputs),
                    list(export_config.outputs), opset=settings.opset, progress=steps)
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
    save_tokenizer(model_dir, staging, trust_remote_code=settings.trust_remote_code)
    cache_shapes = {}
    for i, length in enumerate(cache_lengths):
        shape = list(export_config.cache_shape(settings.batch_size, length))
        cache_shapes[f"past_key.{i}"] = shape
        cache_shapes[f"past_value.{i}"] = shape
    meta = {
        "model_type": hf_model.config.model_type,
        "graphs": list(settings.graphs),
        "settings": settings.recorded(),
        "source_model": os.path.abspath(model_dir),
        "cache_shapes": cache_shapes,
        "pad_token_id": hf_model.config.pad_token_id,
        "versions": package_versions(),
    }
    with open(os.path.join(staging, "qaic_config.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def publish(staging: str, output: str) -> None:
    """Move the finished artifacts from staging into output, replacing what an earlier export left there."""
    os.makedirs(output, exist_ok=True)
    for name in os.listdir(staging):
        target = os.path.join(output, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)
        os.replace(os.path.join(staging, name), target)
    shutil.rmtree(staging, ignore_errors=True)


def run_export(settings: ExportSettings) -> str:
    """Export (and verify, and compile when asked) one checkpoint. Returns the output directory. The public
    entry points are ``optimum_qaic_moe.main_export`` and ``optimum-cli export qaic``."""
    settings.validate()
    model_dir = resolve_model_dir(settings.model, trust_remote_code=settings.trust_remote_code,
                                  **settings.loading_options)
    model_type = read_model_type(model_dir)
    arch, export_config_cls = resolve_architecture(model_type)
    output = os.path.abspath(settings.output or ".")
    if os.path.isfile(output):
        raise UserError(f"output {output} is a file: give a directory")

    from .. import compiler  # resolves the compile backend before the long work, so a demand fails fast

    backend = compiler.resolve_backend(settings)

    staging = f"{output.rstrip(os.sep)}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        with stage(f"load {model_type} from {model_dir}"):
            hf_model = load_model(model_dir, settings.trust_remote_code)
        export_config = export_config_cls(hf_model.config, task=settings.task)
        cache_lengths = arch.cache_lengths(hf_model.config, settings.ctx_len)
        for graph, seq_len, dispatch in graph_plan(settings):
            with stage(f"export {graph} graph (seq_len {seq_len}, MoE {dispatch.dispatch}"
                       + (f", {settings.num_cores} cores, chunk {settings.moe_prefill_packed_chunk_size})"
                          if dispatch.dispatch == "blocked" else ")")):
                export_graph(hf_model, arch, export_config, settings, graph, seq_len, dispatch,
                             os.path.join(staging, graph))
        write_side_files(hf_model, model_dir, staging, settings, export_config, cache_lengths)
        if settings.verify:
            from .verify import reference_run, verify_export

            with stage("verify in onnxruntime against transformers"):
                reference = reference_run(hf_model, settings)
                del hf_model  # onnxruntime loads the graphs next: do not hold both in memory
                gc.collect()
                verify_export(staging, reference)
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    info(f"wrote {output}")
    # After publishing: compile.sh and the compiler read the graphs at their final paths.
    compiler.compile_export(output, settings, backend)
    return output
