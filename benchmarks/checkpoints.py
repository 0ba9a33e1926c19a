"""Random Qwen3-MoE checkpoints for the benchmarks, written locally (no hub)."""


def mid_size_shape(layers: int, hidden: int, experts: int) -> dict:
    """A mid-size Qwen3-MoE: top-8, expert intermediate hidden/4, 16 heads, 4 KV heads, vocab 32000."""
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_experts=experts, num_experts_per_tok=8,
                moe_intermediate_size=hidden // 4, intermediate_size=hidden * 3, num_attention_heads=16,
                num_key_value_heads=4, head_dim=64, vocab_size=32000, norm_topk_prob=True,
                tie_word_embeddings=False)


def write_qwen3_moe_checkpoint(path: str, **shape) -> int:
    """Save a random fp32 Qwen3-MoE of ``shape`` (config kwargs) to ``path``; return its weight bytes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3_moe", **shape), dtype=torch.float32)
    model.save_pretrained(path)
    return sum(p.numel() * p.element_size() for p in model.parameters())
