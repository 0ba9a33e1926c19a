"""Config variants real checkpoints use, through the rewritten causal LM in eager (the same code the export
traces): chunked prefill with a padded last chunk, then decode steps, against transformers' logits."""

import pytest
import torch

from optimum_qaic_moe.moe.block import MoEDispatchConfig
from optimum_qaic_moe.plugins import get_architectures
from optimum_qaic_moe.testing import tiny_configs, tiny_model

ARCHS = {t: a for t, a in get_architectures().items() if t in tiny_configs()}
VARIANTS = [
    ("qwen3_moe", {}),
    ("qwen3_moe", {"norm_topk_prob": False}),
    ("qwen3_moe", {"decoder_sparse_step": 2, "num_hidden_layers": 3}),  # dense MLP layers between MoE ones
    ("qwen3_moe", {"mlp_only_layers": [0]}),
    ("qwen3_moe", {"tie_word_embeddings": True}),
    ("gpt_oss", {}),
    ("gpt_oss", {"sliding_window": 3}),  # a ring of 3 slots, shorter than a prefill chunk
    ("gpt_oss", {"num_experts_per_tok": 1}),
    ("mixtral", {}),
    ("mixtral", {"sliding_window": 3}),  # Mistral's window on every layer: a ring of 3 slots
    ("mixtral", {"num_experts_per_tok": 1}),
    ("mixtral", {"tie_word_embeddings": True}),
    ("qwen2_moe", {}),  # Qwen1.5-MoE: top-k weights not renormalized, a shared expert behind a sigmoid gate
    ("qwen2_moe", {"norm_topk_prob": True}),
    ("qwen2_moe", {"decoder_sparse_step": 2, "num_hidden_layers": 3}),
    ("qwen2_moe", {"mlp_only_layers": [0]}),
    ("qwen2_moe", {"qkv_bias": False}),
    ("qwen2_moe", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2}),
]


def run_chunked(qaic, config, ids, prefill, decode_steps, hf):
    """Prefill in chunks of `prefill` (last padded with position -1), then greedy decode; compare each step."""
    arch = ARCHS[config.model_type]
    _, _, past = arch.export_config(config).example_inputs(1, 1, arch.cache_lengths(hf, 32))
    n = ids.shape[1]
    worst = 0.0
    for start in range(0, n, prefill):
        chunk = ids[:, start : start + prefill]
        k = chunk.shape[1]
        x = torch.zeros(1, prefill, dtype=torch.long)
        pos = torch.full((1, prefill), -1)
        x[:, :k], pos[:, :k] = chunk, torch.arange(start, start + k)
        logits, *past = qaic(x, pos, past)
    seq = ids
    for step in range(decode_steps + 1):
        ref = hf(seq).logits[:, -1]
        worst = max(worst, float((logits[:, -1] - ref).abs().max() / ref.abs().max()))
        if step == decode_steps:
            break
        nxt = ref.argmax(-1, keepdim=True)
        logits, *past = qaic(nxt, torch.tensor([[seq.shape[1]]]), past)
        seq = torch.cat([seq, nxt], dim=1)
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("arch, overrides", VARIANTS, ids=lambda v: str(v))
def test_variant_matches_transformers(arch, overrides):
    hf = tiny_model(arch, **overrides)
    qaic = ARCHS[arch].graph_module(hf, MoEDispatchConfig("blocked", 4, 3), positions=32).eval()
    ids = torch.randint(4, hf.config.vocab_size, (1, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert run_chunked(qaic, hf.config, ids, prefill=5, decode_steps=4, hf=hf) <= 1e-5
