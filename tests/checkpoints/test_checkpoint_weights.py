"""HFWeights: every parameter of the installed transformers' model, read straight from the checkpoint, equals what
``AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)`` loads, bit for bit, whatever layout saved it.
"""

import json

import pytest
import torch
from checkpoint_helpers import FORMATS, TRANSFORMERS_5, assert_bitwise_equal, edited_copy, load_tensors
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_qaic_moe.checkpoint import HFWeights, SafetensorsCheckpoint, meta_model, open_checkpoint
from optimum_qaic_moe.settings import UserError
from optimum_qaic_moe.testing import fused_tensors, saved_tensors, tiny_model, write_fused_checkpoint


def loaded_state(path: str) -> dict:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


# The fused format is transformers 5's: only 5.x loads it (4.57 leaves the experts randomly initialised); its
# 4.57 reference is the model the writer saved, further down.
LOADABLE = [k for k in FORMATS if TRANSFORMERS_5 or not k.endswith("fused")]


@pytest.mark.parametrize("key", LOADABLE)
def test_every_parameter_equals_what_transformers_loads(checkpoints, key):
    weights = open_checkpoint(checkpoints[key])
    want = loaded_state(checkpoints[key])
    assert sorted(weights.names()) == sorted(want)
    for name in weights.names():
        assert weights.shape(name) == tuple(want[name].shape)
        assert_bitwise_equal(weights.read(name), want[name], name)


@pytest.mark.parametrize("key", ["qwen3_moe-hub", "qwen3_moe-fused", "gpt_oss-hub"])
def test_row_slices_equal_slices_of_the_full_read(checkpoints, key):
    """One expert at a time (fused parameters), or some rows of a per-expert weight, are the full read's rows."""
    path = checkpoints[key]
    if key.endswith("fused") and not TRANSFORMERS_5:
        path = config_readable_by_457(path)
    weights = open_checkpoint(path)
    for name in weights.names():
        full = weights.read(name)
        n = full.shape[0]
        for rows in (slice(0, 1), slice(n // 2, n // 2 + 3), slice(n - 1, n)):
            assert_bitwise_equal(weights.read(name, rows), full[rows], f"{name}[{rows}]")


def test_hub_qwen3_moe_has_the_hub_models_knobs(checkpoints):
    weights = open_checkpoint(checkpoints["qwen3_moe-hub"])
    layer0 = "model.layers.0.mlp.experts." + ("gate_up_proj" if TRANSFORMERS_5 else "127.up_proj.weight")
    assert weights.shape(layer0)[0] == (128 if TRANSFORMERS_5 else 8)  # 128 experts
    assert weights.shape("model.layers.0.self_attn.k_proj.weight") == (8, 32)  # one KV head of 8
    assert weights.shape("model.layers.1.mlp.gate_proj.weight") == (48, 32)  # mlp_only_layers=[1]: dense


def test_tied_embeddings_read_the_embedding(checkpoints):
    path = checkpoints["qwen3_moe-hub-tied"]
    assert "lm_head.weight" not in SafetensorsCheckpoint(path).names()
    weights = open_checkpoint(path)
    assert weights.tied_to("lm_head.weight") == "model.embed_tokens.weight"
    assert_bitwise_equal(weights.read("lm_head.weight"), weights.read("model.embed_tokens.weight"))


def config_readable_by_457(path: str) -> str:
    """Apply the fix check_config prints under 4.57 to a 5.x config.json: add the 4.x spellings."""
    with open(f"{path}/config.json") as f:
        config = json.load(f)
    config.update(num_experts=config["num_local_experts"], rope_theta=config["rope_parameters"]["rope_theta"])
    fixed = f"{path}-457"
    import shutil

    shutil.copytree(path, fixed, dirs_exist_ok=True)
    with open(f"{fixed}/config.json", "w") as f:
        json.dump(config, f)
    return fixed


def test_fused_checkpoint_reads_as_the_model_that_was_saved(checkpoints):
    """transformers 5's fused save format, read into either line's model. On 4.57, whose from_pretrained cannot
    load it, the reference is the fp32 model the writer saved (its per-expert Linear weights)."""
    path = checkpoints["qwen3_moe-fused"]
    if not TRANSFORMERS_5:
        path = config_readable_by_457(path)
    weights = open_checkpoint(path)
    want = tiny_model("qwen3_moe", rope_theta=1e6).state_dict()
    assert sorted(weights.names()) == sorted(want)
    for name in weights.names():
        assert_bitwise_equal(weights.read(name), want[name], name)


@pytest.mark.skipif(not TRANSFORMERS_5, reason="save_original_format is transformers 5's")
def test_fused_writer_is_what_transformers_5_writes(tmp_path):
    model = tiny_model("qwen3_moe", rope_theta=1e6)
    model.save_pretrained(tmp_path / "theirs", save_original_format=False)
    ours = write_fused_checkpoint("qwen3_moe", str(tmp_path / "ours"), rope_theta=1e6)
    theirs, mine = load_tensors(str(tmp_path / "theirs")), load_tensors(ours)
    assert sorted(theirs) == sorted(mine)
    for name in theirs:
        assert torch.equal(theirs[name], mine[name]), name
    assert json.loads((tmp_path / "theirs" / "config.json").read_text()) == json.loads(
        (tmp_path / "ours" / "config.json").read_text()
    )


# Mixtral and Qwen2-MoE come by data (their checkpoint.EXPERT_LAYOUTS entries): their 4.x per-expert save and the
# fused one, into either line's model.
OTHER_MOES = {
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 24},
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 8,
        "shared_expert_intermediate_size": 12,
        "intermediate_size": 24,
    },
}


def other_moe(model_type: str):
    config = AutoConfig.for_model(
        model_type,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=40,
        initializer_range=0.1,
        **OTHER_MOES[model_type],
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("model_type", sorted(OTHER_MOES))
@pytest.mark.parametrize("layout", ["per-expert", "fused"])
def test_other_moe_layouts_read_as_the_saved_model(tmp_path, model_type, layout):
    from safetensors.torch import save_file

    model = other_moe(model_type)
    tensors, config = saved_tensors(model)
    assert any(".experts.0." in n for n in tensors)  # save_pretrained writes per expert on both lines
    if layout == "fused":
        tensors = fused_tensors(model_type, tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = open_checkpoint(str(tmp_path))
    want = model.state_dict()
    assert sorted(weights.names()) == sorted(want)
    for name in weights.names():
        assert_bitwise_equal(weights.read(name), want[name], name)


# ---------------------------------------------------------------------------------------------------------------
# checks


def edited(checkpoints, tmp_path, edit) -> HFWeights:
    path = edited_copy(checkpoints["qwen3_moe-hub"], str(tmp_path / "edited"), edit)
    config = AutoConfig.from_pretrained(path)
    return HFWeights(SafetensorsCheckpoint(path), meta_model(config))


def refusal(weights: HFWeights) -> str:
    with pytest.raises(UserError) as err:
        weights.check()
    message = str(err.value)
    assert "\n" not in message and "does not fit the Qwen3MoeForCausalLM" in message
    assert message.endswith("complete the download, or use the config.json that came with these weights")
    return message


def test_check_refuses_a_missing_tensor(checkpoints, tmp_path):
    weights = edited(checkpoints, tmp_path, lambda t: t.pop("model.layers.2.self_attn.q_proj.weight"))
    assert "1 missing tensor (model.layers.2.self_attn.q_proj.weight)" in refusal(weights)


def test_check_refuses_a_missing_expert(checkpoints, tmp_path):
    weights = edited(checkpoints, tmp_path, lambda t: t.pop("model.layers.0.mlp.experts.77.up_proj.weight"))
    message = refusal(weights)
    assert "1 missing tensor (model.layers.0.mlp.experts.77.up_proj.weight" in message
    assert "unexpected" not in message


def test_check_refuses_an_unexpected_tensor(checkpoints, tmp_path):
    def add(t):
        t["model.layers.0.mlp.experts.128.down_proj.weight"] = t["model.layers.0.mlp.experts.0.down_proj.weight"]

    assert "1 unexpected tensor (model.layers.0.mlp.experts.128.down_proj.weight)" in refusal(
        edited(checkpoints, tmp_path, add)
    )


def test_check_refuses_a_wrong_shape(checkpoints, tmp_path):
    def cut(t):
        t["model.layers.0.self_attn.o_proj.weight"] = t["model.layers.0.self_attn.o_proj.weight"][:, :16]

    assert (
        "1 shape mismatch (model.layers.0.self_attn.o_proj.weight is 32x16 in the checkpoint, 32x32 in the model)"
    ) in refusal(edited(checkpoints, tmp_path, cut))


def test_check_refuses_one_expert_of_another_shape(checkpoints, tmp_path):
    def cut(t):
        t["model.layers.2.mlp.experts.9.down_proj.weight"] = t["model.layers.2.mlp.experts.9.down_proj.weight"][:, :4]

    message = refusal(edited(checkpoints, tmp_path, cut))
    assert "1 shape mismatch (model.layers.2.mlp.experts.9.down_proj.weight is 32x4 in the checkpoint, " in message
    assert ("32x8 like expert 0's)" if TRANSFORMERS_5 else "32x8 in the model)") in message


def test_check_refuses_a_fused_tensor_with_other_experts(tmp_path):
    """A fused checkpoint with more experts than the config: on 4.57 the slices of the model's experts would read
    fine, so the fused tensor's own shape must be checked."""
    from safetensors.torch import save_file

    model = tiny_model("qwen3_moe")
    tensors = fused_tensors("qwen3_moe", saved_tensors(model)[0])
    name = "model.layers.1.mlp.experts.down_proj"
    tensors[name] = torch.cat([tensors[name], tensors[name][:1]])  # 7 experts where the config says 6
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model.config.save_pretrained(tmp_path)
    weights = HFWeights(SafetensorsCheckpoint(str(tmp_path)), meta_model(model.config))
    with pytest.raises(
        UserError,
        match=r"1 shape mismatch \(model.layers.1.mlp.experts.down_proj is 7x32x16 in the "
        r"checkpoint, 6x32x16 in the model\)",
    ):
        weights.check()
