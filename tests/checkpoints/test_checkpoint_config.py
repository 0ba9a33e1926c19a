"""check_config: refuse a config.json the installed transformers would read differently from what it says, and
never refuse the real Hub releases."""

import json
import re

import pytest
from checkpoint_helpers import TRANSFORMERS_5
from transformers import AutoConfig

from optimum_qaic_moe.checkpoint import check_config, meta_model
from optimum_qaic_moe.settings import UserError
from optimum_qaic_moe.testing import tiny_config

# The config.json of each Hub release, field for field (Qwen/Qwen3-30B-A3B, Qwen/Qwen3-235B-A22B,
# openai/gpt-oss-20b and openai/gpt-oss-120b, main branch; copies kept in public repositories).
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 48,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
QWEN3_235B_A22B = {
    **QWEN3_30B_A3B,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "max_window_layers": 94,
    "moe_intermediate_size": 1536,
    "num_attention_heads": 64,
    "num_hidden_layers": 94,
}
GPT_OSS_120B = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 18,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "num_local_experts": 128,
    "output_router_logits": False,
    "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "transformers_version": "4.55.0.dev0",
    "use_cache": True,
    "vocab_size": 201088,
}
GPT_OSS_20B = {
    **GPT_OSS_120B,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "num_hidden_layers": 24,
    "num_local_experts": 32,
}
# Layer 0 of openai/gpt-oss-120b's model.safetensors.index.json
GPT_OSS_LAYER0 = {
    "input_layernorm.weight",
    "mlp.experts.down_proj_bias",
    "mlp.experts.down_proj_blocks",
    "mlp.experts.down_proj_scales",
    "mlp.experts.gate_up_proj_bias",
    "mlp.experts.gate_up_proj_blocks",
    "mlp.experts.gate_up_proj_scales",
    "mlp.router.bias",
    "mlp.router.weight",
    "post_attention_layernorm.weight",
    "self_attn.k_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.o_proj.bias",
    "self_attn.o_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.q_proj.weight",
    "self_attn.sinks",
    "self_attn.v_proj.bias",
    "self_attn.v_proj.weight",
}
HUB = {
    "Qwen/Qwen3-30B-A3B": QWEN3_30B_A3B,
    "Qwen/Qwen3-235B-A22B": QWEN3_235B_A22B,
    "openai/gpt-oss-20b": GPT_OSS_20B,
    "openai/gpt-oss-120b": GPT_OSS_120B,
}


def config_dir(tmp_path, raw: dict):
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return str(tmp_path), AutoConfig.from_pretrained(str(tmp_path))


def rope_theta_used(config) -> float:
    return config.rope_parameters["rope_theta"] if TRANSFORMERS_5 else config.rope_theta


@pytest.mark.parametrize("repo", sorted(HUB))
def test_hub_releases_pass(tmp_path, repo):
    raw = HUB[repo]
    path, config = config_dir(tmp_path, raw)
    check_config(path, config)
    assert rope_theta_used(config) == raw["rope_theta"]
    experts = getattr(config, "num_local_experts", None) or config.num_experts
    assert experts == raw.get("num_experts", raw.get("num_local_experts"))


def test_gpt_oss_meta_model_has_the_hub_tensor_names(tmp_path):
    """openai/gpt-oss-120b's layer 0, MXFP4 pairs read as one tensor each, is the installed model's layer 0."""
    two_layers = {"num_hidden_layers": 2, "layer_types": GPT_OSS_120B["layer_types"][:2]}  # layer 0 is what counts
    _, config = config_dir(tmp_path, {**GPT_OSS_120B, **two_layers})
    names = {n[len("model.layers.0.") :] for n in meta_model(config).state_dict() if n.startswith("model.layers.0.")}
    assert names == {re.sub("_(blocks|scales)$", "", n) for n in GPT_OSS_LAYER0}


def transformers_5_config(**overrides) -> dict:
    """A Qwen3-MoE config.json as transformers 5 writes it (rope_parameters, num_local_experts)."""
    from optimum_qaic_moe.testing import config_as_5x

    return config_as_5x(json.loads(tiny_config("qwen3_moe", **overrides).to_json_string()))


def refusal(path, config) -> str:
    with pytest.raises(UserError) as err:
        check_config(path, config)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_transformers_5_rope_parameters_are_refused_on_4_57_and_read_on_5(tmp_path):
    raw = transformers_5_config(rope_theta=1e6)
    assert "rope_theta" not in raw and raw["rope_parameters"]["rope_theta"] == 1e6
    path, config = config_dir(tmp_path, raw)
    if TRANSFORMERS_5:
        check_config(path, config)
        assert config.rope_parameters["rope_theta"] == 1e6 and config.num_local_experts == 6
        return
    message = refusal(path, config)
    assert message.startswith("transformers 4.57.6 would build a different model than ")
    assert "rope_parameters.rope_theta = 1000000.0 is ignored, the model would run with rope_theta = 10000.0" in message
    assert "num_local_experts = 6 is ignored, the model would run with num_experts = 128" in message
    assert message.endswith(" or install transformers 5")
    # The fix it prints works.
    fix = re.search(r": add (.*) to \S+config.json or install", message)[1]
    raw.update(json.loads("{" + fix + "}"))
    path, config = config_dir(tmp_path, raw)
    check_config(path, config)
    assert config.rope_theta == 1e6 and config.num_experts == 6


def test_transformers_5_yarn_rope_is_refused_on_4_57(tmp_path):
    raw = json.loads(tiny_config("gpt_oss").to_json_string())
    rope = {
        "rope_type": "yarn",
        "factor": 16.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 4096,
        "rope_theta": 150000.0,
    }
    raw = {k: v for k, v in raw.items() if k not in ("rope_scaling", "rope_theta")} | {"rope_parameters": rope}
    path, config = config_dir(tmp_path, raw)
    if TRANSFORMERS_5:
        check_config(path, config)
        assert config.rope_parameters["factor"] == 16.0
    else:  # 4.57's GPT-OSS defaults to yarn with factor 32: the ignored factor 16 must be caught
        assert (
            "rope_parameters.factor = 16.0 is ignored, the model would run with rope_scaling.factor = 32.0"
            in refusal(path, config)
        )


def test_swiglu_limit_that_4_57_hard_codes_is_refused_there(tmp_path):
    raw = json.loads(tiny_config("gpt_oss").to_json_string()) | {"swiglu_limit": 5.0}
    path, config = config_dir(tmp_path, raw)
    if TRANSFORMERS_5:
        check_config(path, config)
        assert config.swiglu_limit == 5.0
    else:
        message = refusal(path, config)
        assert "swiglu_limit = 5.0 is ignored, the model would run with swiglu_limit (hard-coded) = 7.0" in message
        assert message.endswith(": install transformers 5")


def test_unsupported_quantization_is_refused(tmp_path):
    raw = dict(QWEN3_30B_A3B, quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]})
    path, config = config_dir(tmp_path, raw)
    assert (
        "quantization_config.quant_method 'fp8' for qwen3_moe: only unquantized (float32/bf16/fp16) "
        "checkpoints and MXFP4 gpt-oss are read" in refusal(path, config)
    )
