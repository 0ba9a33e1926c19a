"""Random Qwen3-MoE checkpoints for the benchmarks, written locally (no hub).

- ``write_qwen3_moe_checkpoint``: the installed transformers' ``save_pretrained`` of a random fp32 model (the whole
  model is built in memory: for small shapes).
- ``write_hub_qwen3_moe``: the Hub release's on-disk format (bf16, shards + index, per-expert names, Qwen/Qwen3-*'s
  config.json fields) written one shard at a time, so a model of any size costs about one shard of memory.
"""

import json
import os

# Qwen/Qwen3-30B-A3B's layer shapes (config.json), without the layer count.
QWEN3_30B_A3B = {
    "hidden_size": 2048,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 768,
    "intermediate_size": 6144,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "max_position_embeddings": 40960,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


def mid_size_shape(layers: int, hidden: int, experts: int) -> dict:
    """A mid-size Qwen3-MoE: top-8, expert intermediate hidden/4, 16 heads, 4 KV heads, vocab 32000."""
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_experts": experts,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": hidden // 4,
        "intermediate_size": hidden * 3,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "vocab_size": 32000,
        "norm_topk_prob": True,
        "tie_word_embeddings": False,
    }


def write_qwen3_moe_checkpoint(path: str, **shape) -> int:
    """Save a random fp32 Qwen3-MoE of ``shape`` (config kwargs) to ``path``; return its weight bytes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3_moe", **shape), dtype=torch.float32)
    model.save_pretrained(path)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def qwen3_moe_hub_tensors(shape: dict, layers: int) -> dict:
    """{name: shape} of a Qwen3-MoE of ``shape`` (config kwargs) with ``layers`` layers, as the Hub stores it: one
    tensor per expert projection, in the order of the Hub's shards."""
    h, i, d, e = shape["hidden_size"], shape["moe_intermediate_size"], shape["head_dim"], shape["num_experts"]
    q, kv = shape["num_attention_heads"] * d, shape["num_key_value_heads"] * d
    out = {"model.embed_tokens.weight": (shape["vocab_size"], h)}
    for layer in range(layers):
        p = f"model.layers.{layer}"
        for expert in range(e):
            x = f"{p}.mlp.experts.{expert}"
            out.update(
                {f"{x}.gate_proj.weight": (i, h), f"{x}.up_proj.weight": (i, h), f"{x}.down_proj.weight": (h, i)}
            )
        out.update(
            {
                f"{p}.mlp.gate.weight": (e, h),
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.post_attention_layernorm.weight": (h,),
                f"{p}.self_attn.q_proj.weight": (q, h),
                f"{p}.self_attn.k_proj.weight": (kv, h),
                f"{p}.self_attn.v_proj.weight": (kv, h),
                f"{p}.self_attn.o_proj.weight": (h, q),
                f"{p}.self_attn.q_norm.weight": (d,),
                f"{p}.self_attn.k_norm.weight": (d,),
            }
        )
    out.update({"model.norm.weight": (h,), "lm_head.weight": (shape["vocab_size"], h)})
    return out


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _shard_names(shapes: dict, shard_bytes: int) -> list:
    """Consecutive groups of names of at most ``shard_bytes`` bf16 bytes each (a larger tensor alone)."""
    groups, size = [[]], 0
    for name, dims in shapes.items():
        nbytes = 2 * _numel(dims)
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def _random_bf16(dims, generator):
    """Normal(0, 0.02) in bf16, as transformers initialises Qwen3-MoE (RMSNorm weights: ones)."""
    import torch

    if len(dims) == 1:
        return torch.ones(dims, dtype=torch.bfloat16)
    return (torch.randn(dims, generator=generator) * 0.02).to(torch.bfloat16)


def write_hub_qwen3_moe(path: str, layers: int, shard_bytes: int = 1 << 30, seed: int = 0, **shape) -> int:
    """A random Qwen3-MoE of ``shape`` (config kwargs) with ``layers`` layers in the Hub's format, at most
    ``shard_bytes`` per shard, generated and written one shard at a time. Returns the float32 bytes of its
    weights (what the export writes)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from optimum_qaic_moe.testing import hub_config

    shapes = qwen3_moe_hub_tensors(shape, layers)
    groups = _shard_names(shapes, shard_bytes)
    os.makedirs(path, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for k, names in enumerate(groups, start=1):
        file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        save_file(
            {n: _random_bf16(shapes[n], generator) for n in names}, os.path.join(path, file), metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(names, file))
    total = sum(2 * _numel(d) for d in shapes.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = AutoConfig.for_model("qwen3_moe", num_hidden_layers=layers, **shape)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hub_config("qwen3_moe", config), f, indent=2)
    return 2 * total
