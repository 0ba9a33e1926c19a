"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): GQA attention with q/k/v biases, a softmax top-k router (renormalized
over the k only with ``norm_topk_prob``), SiLU-gated routed experts, and a shared expert that every token runs,
scaled by ``sigmoid(shared_expert_gate(x))``. Layers listed in ``mlp_only_layers``, or off the
``decoder_sparse_step`` grid, have a dense MLP instead. Sliding-window layers (``use_sliding_window``) keep a ring
cache.

The routed experts come in the same two transformers layouts as Qwen3-MoE's (5.x fused, 4.57 a list of MLPs); the
shared expert is one MLP on both lines.
"""

from __future__ import annotations

from ..moe.block import MoEBlock, MoEDispatchConfig
from ..plugins import hookimpl
from .base import Architecture, linear
from .qwen3_moe import SoftmaxTopKRouter, gated_experts


class Qwen2MoeArchitecture(Architecture):
    model_type = "qwen2_moe"
    tiny_config = {  # 6 experts: not a multiple of the usual test core counts; Qwen1.5-MoE's norm_topk_prob
        "hidden_size": 32,
        "intermediate_size": 48,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_experts": 6,
        "num_experts_per_tok": 2,
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": 0.1,
        "rms_norm_eps": 1e-6,
    }

    def sliding_window(self, hf_attention, config, layer_idx: int) -> int | None:
        import transformers

        if int(transformers.__version__.split(".")[0]) >= 5:  # only the layers layer_types names sliding
            return getattr(hf_attention, "sliding_window", None)
        # transformers 4.57's eager and SDPA attention window every layer when use_sliding_window is set (its
        # max_window_layers reaches only flash-attention)
        return config.sliding_window if config.use_sliding_window else None

    def moe_block(self, hf_mlp, config, dispatch: MoEDispatchConfig) -> MoEBlock | None:
        if not hasattr(hf_mlp, "experts"):  # a dense MLP layer (mlp_only_layers / decoder_sparse_step)
            return None
        router = SoftmaxTopKRouter(linear(hf_mlp.gate), config.num_experts_per_tok, config.norm_topk_prob)
        return MoEBlock(
            router,
            gated_experts(hf_mlp.experts),
            config.num_experts,
            dispatch,
            shared=self.dense_mlp(hf_mlp.shared_expert, config),
            shared_gate=linear(hf_mlp.shared_expert_gate),
        )  # [H, 1]: one scale per token


@hookimpl
def register_architectures(register):
    register(Qwen2MoeArchitecture())
