"""Tiny random checkpoints of every registered architecture (its ``tiny_config``), written offline in seconds.

Used by the tests, the examples and the README quickstart (the model hub is not needed):

    qaic-moe-tiny qwen3_moe ./tiny-qwen3-moe
    python -m optimum_qaic_moe.testing gpt_oss ./tiny-gpt-oss
    qaic-moe-tiny gpt_oss ./tiny-gpt-oss-hub --format hub     # MXFP4 experts, shards, as openai/gpt-oss-* ships

Formats (``--format``): ``fp32`` (default) is the installed transformers' own ``save_pretrained``; ``hub`` is the
Hub releases' on-disk format (Qwen3-MoE: bf16 in 4 shards with per-expert names and Qwen/Qwen3-*'s config.json
fields; gpt-oss: MXFP4 experts, bf16 elsewhere, shards, openai/gpt-oss-*'s config.json with its
quantization_config; Mixtral and Qwen2-MoE: bf16 shards with per-expert names and the config.json fields of
mistralai/Mixtral-8x7B-v0.1 and Qwen/Qwen1.5-MoE-A2.7B) at the Hub models' knobs (``HUB_OVERRIDES``);
``bf16`` is ``save_pretrained`` in bf16, in shards (gpt-oss's dequantized releases); ``fused`` is what transformers 5
writes with ``save_pretrained(save_original_format=False)``: fused experts and a 5.x config.json.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

WORDS = (
    "the a an of to in is was it on for with as by at from that this be are or and not but have had has "
    "one two three four five six seven eight nine ten red green blue black white cat dog bird fish tree "
    "house car road river sea sky sun moon star rain snow wind fire stone gold iron glass paper book word "
    "song light dark cold warm fast slow big small old new good bad first last long short high low"
).split()
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>")


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_configs() -> dict:
    """{model_type: config kwargs of a tiny model} of every registered architecture that declares one."""
    from .plugins import get_architectures

    return {t: dict(a.tiny_config) for t, a in sorted(get_architectures().items()) if getattr(a, "tiny_config", None)}


def tiny_config(model_type: str, **overrides):
    from transformers import AutoConfig

    configs = tiny_configs()
    if model_type not in configs:
        raise ValueError(f"no tiny config for {model_type!r}; known: {', '.join(configs)}")
    kwargs = configs[model_type]
    kwargs.update(vocab_size=len(SPECIALS) + len(WORDS), pad_token_id=1, bos_token_id=2, eos_token_id=3)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, seed: int = 0, **overrides):
    """A randomly initialised fp32 causal LM of ``model_type``, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # transformers initialises biases and attention sinks to zero or small values; random ones exercise every term
    # of the math.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "sinks")):
                p.normal_(0.0, 0.1)
    return model.eval()


def write_tiny_checkpoint(model_type: str, path: str, seed: int = 0, **overrides) -> str:
    """Write a tiny ``model_type`` checkpoint (weights, config, generation config, tokenizer) to ``path``."""
    model = tiny_model(model_type, seed=seed, **overrides)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The Hub's on-disk formats

FORMATS = ("fp32", "hub", "bf16", "fused")

# The Hub models' knobs at tiny size: Qwen3-MoE with 128 experts top-8 (as Qwen3-30B-A3B and Qwen3-235B-A22B), one
# KV head, a dense layer (mlp_only_layers) and rope_theta 1e6; gpt-oss with widths MXFP4 can hold (multiples of
# 32), 8 experts top-4, alternating sliding and full attention.
HUB_OVERRIDES: dict[str, dict[str, Any]] = {
    "qwen3_moe": {
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "num_key_value_heads": 1,
        "num_hidden_layers": 3,
        "mlp_only_layers": [1],
        "moe_intermediate_size": 8,
        "rope_theta": 1e6,
    },
    "gpt_oss": {
        "hidden_size": 64,
        "intermediate_size": 64,
        "head_dim": 16,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_local_experts": 8,
        "num_experts_per_tok": 4,
    },
    # Mixtral-8x7B: 8 experts top-2, 4 query heads per KV head, rope_theta 1e6, no sliding window
    "mixtral": {
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "num_key_value_heads": 1,
        "rope_theta": 1e6,
        "router_aux_loss_coef": 0.02,
    },
    # Qwen1.5-MoE-A2.7B: 60 experts top-4, not renormalized, a shared expert 4x an expert's width, no GQA, a
    # sliding_window that use_sliding_window leaves off
    "qwen2_moe": {
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "norm_topk_prob": False,
        "moe_intermediate_size": 8,
        "shared_expert_intermediate_size": 32,
        "num_key_value_heads": 4,
        "rope_theta": 1e6,
    },
}

# The fields of the Hub releases' config.json (Qwen/Qwen3-30B-A3B and Qwen/Qwen3-235B-A22B carry the same list;
# openai/gpt-oss-20b and -120b too), in their order; values come from the tiny config.
HUB_CONFIG_FIELDS = {
    "qwen3_moe": (
        "architectures",
        "attention_bias",
        "attention_dropout",
        "bos_token_id",
        "decoder_sparse_step",
        "eos_token_id",
        "head_dim",
        "hidden_act",
        "hidden_size",
        "initializer_range",
        "intermediate_size",
        "max_position_embeddings",
        "max_window_layers",
        "mlp_only_layers",
        "model_type",
        "moe_intermediate_size",
        "norm_topk_prob",
        "num_attention_heads",
        "num_experts",
        "num_experts_per_tok",
        "num_hidden_layers",
        "num_key_value_heads",
        "output_router_logits",
        "rms_norm_eps",
        "rope_scaling",
        "rope_theta",
        "router_aux_loss_coef",
        "sliding_window",
        "tie_word_embeddings",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "use_sliding_window",
        "vocab_size",
    ),
    "gpt_oss": (
        "architectures",
        "attention_bias",
        "attention_dropout",
        "eos_token_id",
        "experts_per_token",
        "head_dim",
        "hidden_act",
        "hidden_size",
        "initial_context_length",
        "initializer_range",
        "intermediate_size",
        "layer_types",
        "max_position_embeddings",
        "model_type",
        "num_attention_heads",
        "num_experts_per_tok",
        "num_hidden_layers",
        "num_key_value_heads",
        "num_local_experts",
        "output_router_logits",
        "pad_token_id",
        "quantization_config",
        "rms_norm_eps",
        "rope_scaling",
        "rope_theta",
        "router_aux_loss_coef",
        "sliding_window",
        "swiglu_limit",
        "tie_word_embeddings",
        "transformers_version",
        "use_cache",
        "vocab_size",
    ),
    "mixtral": (
        "architectures",
        "attention_dropout",
        "bos_token_id",
        "eos_token_id",
        "hidden_act",
        "hidden_size",
        "initializer_range",
        "intermediate_size",
        "max_position_embeddings",
        "model_type",
        "num_attention_heads",
        "num_experts_per_tok",
        "num_hidden_layers",
        "num_key_value_heads",
        "num_local_experts",
        "output_router_logits",
        "rms_norm_eps",
        "rope_theta",
        "router_aux_loss_coef",
        "sliding_window",
        "tie_word_embeddings",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "vocab_size",
    ),
    "qwen2_moe": (
        "architectures",
        "attention_dropout",
        "bos_token_id",
        "eos_token_id",
        "hidden_act",
        "hidden_size",
        "initializer_range",
        "intermediate_size",
        "max_position_embeddings",
        "max_window_layers",
        "model_type",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "rms_norm_eps",
        "rope_theta",
        "sliding_window",
        "tie_word_embeddings",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "use_sliding_window",
        "vocab_size",
        "decoder_sparse_step",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "num_experts_per_tok",
        "num_experts",
        "norm_topk_prob",
        "output_router_logits",
        "router_aux_loss_coef",
    ),
}
HUB_CONFIG_VALUES: dict[str, dict[str, Any]] = {
    "qwen3_moe": {"torch_dtype": "bfloat16", "transformers_version": "4.51.0"},
    "gpt_oss": {
        "hidden_act": "silu",
        "initial_context_length": 4096,
        "swiglu_limit": 7.0,
        "transformers_version": "4.55.0.dev0",
        "quantization_config": {
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
            "quant_method": "mxfp4",
        },
    },
    "mixtral": {"torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0", "sliding_window": None},
    "qwen2_moe": {
        "torch_dtype": "bfloat16",
        "transformers_version": "4.39.0.dev0",
        "sliding_window": 32768,
        "use_sliding_window": False,
    },
}
HUB_NUM_SHARDS = {"qwen3_moe": 4, "gpt_oss": 3, "mixtral": 3, "qwen2_moe": 3}
MXFP4_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def saved_tensors(model) -> tuple[dict, dict]:
    """(tensors, config dict) exactly as the installed transformers' ``save_pretrained`` writes ``model``: per-expert
    names on both lines (5.x converts its fused experts back), tied weights left out."""
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        files = sorted(f for f in os.listdir(tmp) if f.endswith(".safetensors"))
        tensors = {k: v for f in files for k, v in load_file(os.path.join(tmp, f)).items()}
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
    return tensors, config


def write_shards(
    tensors: dict, path: str, num_shards: int, shard_name: str = "model-{i:05d}-of-{n:05d}.safetensors", first: int = 1
) -> None:
    """Save ``tensors`` in order into ``num_shards`` safetensors files of about equal size, plus the index."""
    from safetensors.torch import save_file

    total = sum(t.numel() * t.element_size() for t in tensors.values())
    groups: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        if size >= total * len(groups) / num_shards and len(groups) < num_shards:
            groups.append([])
        groups[-1].append(name)
        size += t.numel() * t.element_size()
    n = len(groups) - 1 + first
    weight_map = {}
    for i, names in enumerate(groups):
        file = shard_name.format(i=i + first, n=n)
        save_file({k: tensors[k].contiguous() for k in names}, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in names})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def quantize_mxfp4(w):
    """float [..., K] (K a multiple of 32) -> MXFP4 (blocks [..., K/32, 16] uint8, scales [..., K/32] uint8): each
    32-value block gets the power of two that brings its largest magnitude into FP4's range, each value the
    nearest FP4 code. The layout transformers reads: two codes a byte, low nibble first; scale biased by 127."""
    import torch

    from .checkpoint import FP4_E2M1

    groups = w.float().reshape(*w.shape[:-1], w.shape[-1] // 32, 32)  # [..., G, 32]
    amax = groups.abs().amax(-1)  # [..., G]
    # FP4's largest magnitude is 6 = 1.5 * 2**2: scale the block's largest value into [4, 8), then clamp to 6.
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(1e-30))) - 2, 0).clamp(-127, 127)
    scaled = (groups / torch.exp2(exponent).unsqueeze(-1)).clamp(-6, 6)
    lut = torch.tensor(FP4_E2M1)
    codes = (scaled.unsqueeze(-1) - lut).abs().argmin(-1).to(torch.uint8)  # [..., G, 32]
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)  # [..., G, 16]
    return blocks, (exponent + 127).to(torch.uint8)


def _rope_as_4x(config) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) as transformers 4.x writes them, from either line's config."""
    params = getattr(config, "rope_parameters", None)
    if params is None:
        return config.rope_theta, getattr(config, "rope_scaling", None)  # 4.57 Mixtral has none
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return params["rope_theta"], None if scaling.get("rope_type", "default") == "default" else scaling


def hub_config(model_type: str, config) -> dict:
    """config.json as the Hub release of ``model_type`` has it (its fields, 4.x spellings) for ``config``."""
    rope_theta, rope_scaling = _rope_as_4x(config)
    values = dict(
        config.to_dict(),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        num_experts=getattr(config, "num_experts", None),
        max_window_layers=config.num_hidden_layers,
        experts_per_token=config.num_experts_per_tok,
        architectures=config.architectures or [type(config).__name__.replace("Config", "ForCausalLM")],
    )
    values.update(HUB_CONFIG_VALUES[model_type])
    return {k: values.get(k) for k in HUB_CONFIG_FIELDS[model_type]}


def write_hub_checkpoint(model_type: str, path: str, seed: int = 0, num_shards: int | None = None, **overrides) -> str:
    """A tiny ``model_type`` checkpoint in its Hub release's on-disk format (see the module docstring)."""
    import torch

    overrides = {**HUB_OVERRIDES[model_type], **overrides}
    model = tiny_model(model_type, seed=seed, **overrides)
    tensors, _ = saved_tensors(model)
    out = {}
    for name, t in tensors.items():
        if model_type == "gpt_oss" and name.endswith(MXFP4_EXPERTS):
            # transformers keeps [E, in, out]; the checkpoint stores [E, out, in/32, 16] blocks + [E, out, in/32].
            out[name + "_blocks"], out[name + "_scales"] = quantize_mxfp4(t.transpose(1, 2))
        else:
            out[name] = t.to(torch.bfloat16)
    os.makedirs(path, exist_ok=True)
    if model_type == "gpt_oss":  # openai/gpt-oss-20b numbers its shards model-00000-of-00002 .. model-00002-of-00002
        write_shards(out, path, num_shards or HUB_NUM_SHARDS[model_type], "model-{i:05d}-of-{n:05d}.safetensors", 0)
    else:
        write_shards(out, path, num_shards or HUB_NUM_SHARDS[model_type])
    _write_json(os.path.join(path, "config.json"), hub_config(model_type, model.config))
    model.generation_config.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def write_bf16_checkpoint(model_type: str, path: str, seed: int = 0, num_shards: int = 2, **overrides) -> str:
    """``save_pretrained`` of a tiny ``model_type`` in bf16, in ``num_shards`` shards (unquantized gpt-oss experts,
    as the dequantized bf16 releases of gpt-oss ship them)."""
    import torch

    model = tiny_model(model_type, seed=seed, **overrides)
    tensors, config = saved_tensors(model)
    os.makedirs(path, exist_ok=True)
    write_shards({k: t.to(torch.bfloat16) for k, t in tensors.items()}, path, num_shards)
    config.pop("torch_dtype", None)
    config["dtype"] = "bfloat16"
    _write_json(os.path.join(path, "config.json"), config)
    model.generation_config.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def fused_tensors(model_type: str, tensors: dict) -> dict:
    """Per-expert tensors -> transformers 5's fused experts (gate_up_proj [E, 2I, H] = cat(gate, up) per expert,
    down_proj [E, H, I]) and 5.x names, by the model type's ``checkpoint.EXPERT_LAYOUTS`` entry."""
    import torch

    from .checkpoint import EXPERT_LAYOUTS, expert_name_regex

    layout = EXPERT_LAYOUTS[model_type]
    patterns = [
        (target, k, expert_name_regex(t)) for target, parts in layout.fused.items() for k, t in enumerate(parts)
    ]
    out: dict[str, torch.Tensor] = {}
    pieces: dict[str, dict[int, dict[int, torch.Tensor]]] = {}  # fused name -> {expert: {part index: tensor}}
    for name, t in tensors.items():
        hit = next(((target, k, m) for target, k, regex in patterns if (m := regex.match(name))), None)
        if hit:
            target, k, m = hit
            pieces.setdefault(f"{m['prefix']}.{target}", {}).setdefault(int(m["e"]), {})[k] = t
            continue
        for old, new in layout.renames:
            name = name.replace(old, new)
        out[name] = t
    for name, experts in pieces.items():
        out[name] = torch.stack([torch.cat([experts[e][k] for k in sorted(experts[e])]) for e in sorted(experts)])
    return out


def config_as_5x(config: dict) -> dict:
    """A 4.x-style config.json dict respelled as transformers 5 writes it (``num_local_experts``,
    ``rope_parameters``)."""
    out = dict(config)
    if "num_experts" in out:
        out["num_local_experts"] = out.pop("num_experts")
    if "rope_theta" in out:
        scaling = out.pop("rope_scaling", None) or {"rope_type": "default"}
        out["rope_parameters"] = {"rope_theta": out.pop("rope_theta"), **scaling}
    return out


def write_fused_checkpoint(model_type: str, path: str, seed: int = 0, **overrides) -> str:
    """A tiny ``model_type`` checkpoint as transformers 5 saves it with ``save_original_format=False``: fused
    experts (fp32) and a 5.x config.json; written the same way on every transformers line."""
    from safetensors.torch import save_file

    model = tiny_model(model_type, seed=seed, **overrides)
    tensors, config = saved_tensors(model)
    os.makedirs(path, exist_ok=True)
    save_file(fused_tensors(model_type, tensors), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(path, "config.json"), config_as_5x(config))
    model.generation_config.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def write_checkpoint(model_type: str, path: str, format: str = "fp32", seed: int = 0, **overrides) -> str:
    """A tiny ``model_type`` checkpoint in ``format`` (one of ``FORMATS``)."""
    writers = {
        "fp32": write_tiny_checkpoint,
        "hub": write_hub_checkpoint,
        "bf16": write_bf16_checkpoint,
        "fused": write_fused_checkpoint,
    }
    if format not in writers:
        raise ValueError(f"unknown checkpoint format {format!r}; known: {', '.join(FORMATS)}")
    if format == "fused" and model_type != "qwen3_moe":
        raise ValueError(f"the fused format is transformers 5's Qwen3-MoE layout, not {model_type}'s")
    return writers[format](model_type, path, seed=seed, **overrides)


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="qaic-moe-tiny", description="Write a tiny random MoE checkpoint.")
    parser.add_argument("model_type", choices=sorted(tiny_configs()))
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="fp32",
        help="fp32: save_pretrained (default); hub: the Hub release's on-disk format (bf16 shards, "
        "gpt-oss MXFP4); bf16: save_pretrained in bf16 shards; fused: transformers 5's fused "
        "experts (qwen3_moe)",
    )
    args = parser.parse_args(argv)
    if args.format == "fused" and args.model_type != "qwen3_moe":
        parser.exit(2, "error: --format fused is transformers 5's Qwen3-MoE layout: use it with qwen3_moe\n")
    write_checkpoint(args.model_type, args.path, format=args.format, seed=args.seed)
    print(f"wrote a tiny {args.model_type} checkpoint ({args.format}) to {args.path}")


if __name__ == "__main__":
    main()
