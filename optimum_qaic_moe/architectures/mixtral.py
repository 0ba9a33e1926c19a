"""Mixtral: Mistral's attention (GQA without biases, one optional sliding window for every layer) and a sparse MoE
of SiLU-gated experts behind a softmax top-k router that always renormalizes over the k.

transformers keeps the MoE under two names and in two layouts, both used without copying where the layout allows:
  * 5.x: ``layer.mlp``, a router ``gate`` holding ``weight`` [E, H] and fused ``experts.gate_up_proj`` [E, 2I, H] /
    ``experts.down_proj`` [E, H, I];
  * 4.57: ``layer.block_sparse_moe``, a ``gate`` Linear and ``experts``, a list of MLPs whose Linear layers are
    ``w1`` (gate), ``w3`` (up) and ``w2`` (down) (stacked once).
"""

from __future__ import annotations

from torch import nn

from ..moe.block import MoEBlock, MoEDispatchConfig
from ..plugins import hookimpl
from .base import Architecture, experts_from_fused, experts_from_modules, linear
from .qwen3_moe import SoftmaxTopKRouter

LEGACY_MOE = "block_sparse_moe"  # the MoE's attribute name on transformers 4.x


class MixtralArchitecture(Architecture):
    model_type = "mixtral"
    tiny_config = {  # a tiny random model for the tests and `qaic-moe-tiny mixtral`; 6 experts: no core count divides
        "hidden_size": 32,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "num_local_experts": 6,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": 0.1,
        "rms_norm_eps": 1e-5,
    }

    @property
    def moe_returns_router_scores(self) -> bool:  # 4.x's decoder layer unpacks (hidden, router_logits)
        import transformers

        return int(transformers.__version__.split(".")[0]) < 5

    def mlp_of(self, hf_layer) -> nn.Module:  # where the MoE is: block_sparse_moe on 4.x, mlp on 5.x
        return getattr(hf_layer, LEGACY_MOE) if hasattr(hf_layer, LEGACY_MOE) else hf_layer.mlp

    def set_mlp(self, hf_layer, module: nn.Module) -> None:  # the eager rewrite puts its block back there
        setattr(hf_layer, LEGACY_MOE if hasattr(hf_layer, LEGACY_MOE) else "mlp", module)

    def sliding_window(self, hf_attention: nn.Module, config, layer_idx: int) -> int | None:
        return config.sliding_window or None  # Mistral's attention has none of its own: the config's, every layer

    def moe_block(self, hf_mlp, config, dispatch: MoEDispatchConfig) -> MoEBlock | None:
        router = SoftmaxTopKRouter(linear(hf_mlp.gate), config.num_experts_per_tok, normalize=True)
        experts = hf_mlp.experts
        if hasattr(experts, "gate_up_proj"):  # 5.x: fused [E, 2I, H] and [E, H, I]
            experts = experts_from_fused(experts.gate_up_proj, experts.down_proj)
        else:  # 4.x: a list of MLPs with Linear w1 (gate), w3 (up), w2 (down)
            experts = experts_from_modules(list(experts), "w1", "w3", "w2")
        return MoEBlock(router, experts, config.num_local_experts, dispatch)


@hookimpl
def register_architectures(register):
    register(MixtralArchitecture())
