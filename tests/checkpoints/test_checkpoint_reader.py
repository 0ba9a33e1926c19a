"""SafetensorsCheckpoint: the tensors of one checkpoint directory, memory-mapped, as float32."""

import json
import os
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import assert_bitwise_equal, load_tensors

from optimum_qaic_moe.checkpoint import SafetensorsCheckpoint, dequantize_mxfp4
from optimum_qaic_moe.settings import UserError


def test_mxfp4_dequantization_is_transformers_bit_for_bit():
    """Every code and every scale (0..255: subnormal, normal and overflowing powers of two) against transformers'
    own dequantization at float32, on the installed line."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 256, 2, 16), dtype=torch.uint8, generator=g)  # [E, out, G, 16]
    scales = torch.arange(256, dtype=torch.int32).reshape(1, 256, 1).expand(3, 256, 2).to(torch.uint8)
    want = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, in, out]
    got = dequantize_mxfp4(blocks, scales).transpose(1, 2)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num().view(torch.int32), want.nan_to_num().view(torch.int32))


def test_hub_mxfp4_reads_as_its_source_within_fp4_precision(checkpoints):
    """The writer's MXFP4 is a real quantization of the tiny model's experts (so the bit-exact comparisons with
    transformers compare meaningful numbers): within half an FP4 step of the largest value in each 32-block."""
    from optimum_qaic_moe.testing import HUB_OVERRIDES, tiny_model

    source = tiny_model("gpt_oss", **HUB_OVERRIDES["gpt_oss"]).state_dict()
    ckpt = SafetensorsCheckpoint(checkpoints["gpt_oss-hub"])
    name = "model.layers.1.mlp.experts.gate_up_proj"
    assert ckpt.stored_dtype(name) == "MXFP4"
    got, want = ckpt.read(name), source[name]  # [E, H, 2I]
    blockmax = want.abs().reshape(8, 2, 32, -1).amax(2, keepdim=True).expand(8, 2, 32, -1).reshape(want.shape)
    assert ((got - want).abs() <= blockmax / 4 + 1e-30).all()
    assert (got != 0).float().mean() > 0.5


def test_names_and_shapes_are_logical(checkpoints):
    ckpt = SafetensorsCheckpoint(checkpoints["gpt_oss-hub"])
    names = ckpt.names()
    assert "model.layers.0.mlp.experts.down_proj" in names
    assert not any(n.endswith(("_blocks", "_scales")) for n in names)
    assert ckpt.shape("model.layers.0.mlp.experts.gate_up_proj") == (8, 64, 128)  # [E, H, 2I], as transformers keeps it
    assert ckpt.shape("model.layers.0.mlp.experts.down_proj") == (8, 64, 64)  # [E, I, H]
    assert ckpt.stored_dtype("model.embed_tokens.weight") == "BF16"


@pytest.mark.parametrize("key", ["qwen3_moe-hub", "gpt_oss-hub", "qwen3_moe-fp32"])
def test_row_slices_equal_slices_of_the_full_read(checkpoints, key):
    ckpt = SafetensorsCheckpoint(checkpoints[key])
    for name in ckpt.names():
        full = ckpt.read(name)
        n = full.shape[0] if full.dim() else 1
        for rows in (slice(0, 1), slice(n // 3, n // 3 + 2), slice(n - 1, n), slice(None)):
            assert_bitwise_equal(ckpt.read(name, rows), full[rows], f"{name}[{rows}]")


def test_bf16_is_converted_exactly(checkpoints):
    path = checkpoints["qwen3_moe-hub"]
    stored = load_tensors(path)
    ckpt = SafetensorsCheckpoint(path)
    for name in ("model.embed_tokens.weight", "model.layers.2.mlp.experts.127.down_proj.weight"):
        assert stored[name].dtype == torch.bfloat16
        assert ckpt.stored(name).dtype == torch.bfloat16
        assert_bitwise_equal(ckpt.read(name), stored[name].float(), name)


def test_float32_read_is_a_view_of_the_mapped_file_and_never_writes_it(checkpoints):
    path = checkpoints["qwen3_moe-fp32"]
    name = "model.layers.0.mlp.gate.weight"
    ckpt = SafetensorsCheckpoint(path)
    a, b = ckpt.read(name), ckpt.read(name, slice(1, 3))
    assert a.data_ptr() == ckpt.read(name).data_ptr()  # no copy: the same mapped bytes each time
    assert b.data_ptr() == a.data_ptr() + a.stride(0) * 4  # rows 1.. start one row further in the mapping
    file = Path(path) / "model.safetensors"
    before = file.read_bytes()
    want = a.clone()
    a.add_(1.0)  # copy-on-write: private to this process
    assert file.read_bytes() == before
    assert_bitwise_equal(SafetensorsCheckpoint(path).read(name), want)


def test_index_with_a_missing_shard_is_one_clear_error(checkpoints, tmp_path):
    import shutil

    path = shutil.copytree(checkpoints["qwen3_moe-hub"], tmp_path / "m")
    os.remove(path / "model-00003-of-00004.safetensors")
    with pytest.raises(UserError, match=r"lacks 1 of the 4 shards .*model-00003-of-00004.safetensors.*incomplete"):
        SafetensorsCheckpoint(str(path))


def test_index_naming_a_tensor_its_shard_lacks_is_one_clear_error(checkpoints, tmp_path):
    import shutil

    path = shutil.copytree(checkpoints["qwen3_moe-hub"], tmp_path / "m")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.gate.weight"] = "model-00001-of-00004.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        UserError,
        match=r"1 tensors listed in .* are not in the shard it names "
        r"\(model.layers.9.mlp.gate.weight\)",
    ):
        SafetensorsCheckpoint(str(path))


def test_truncated_file_is_one_clear_error(checkpoints, tmp_path):
    data = (Path(checkpoints["qwen3_moe-fp32"]) / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match="truncated or corrupt at tensor .*: re-download or re-save it"):
        SafetensorsCheckpoint(str(tmp_path))


def test_directory_without_safetensors_is_one_clear_error(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(
        UserError, match="no safetensors weights in .*: expected model.safetensors or model.safetensors.index.json"
    ) as err:
        SafetensorsCheckpoint(str(tmp_path))
    assert "\n" not in str(err.value)


def test_tensor_at_a_misaligned_offset_reads_exactly(tmp_path):
    """The safetensors library aligns every tensor to its dtype; a file from another writer may not (a float32
    tensor right after 3 bf16 values): it is read exactly, into aligned memory."""
    import struct

    a, b = torch.randn(3).to(torch.bfloat16), torch.randn(5, 7)
    header = json.dumps(
        {
            "a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
            "b": {"dtype": "F32", "shape": [5, 7], "data_offsets": [6, 146]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    data = a.view(torch.uint8).numpy().tobytes() + b.numpy().tobytes()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)
    ckpt = SafetensorsCheckpoint(str(tmp_path))
    assert_bitwise_equal(ckpt.read("b"), b)
    assert ckpt.read("b").data_ptr() % 4 == 0
    assert_bitwise_equal(ckpt.read("b", slice(3, 5)), b[3:5])
    assert_bitwise_equal(ckpt.read("a"), a)


def test_malformed_header_is_one_clear_error(tmp_path):
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [2]}}).encode()  # no data_offsets
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(UserError, match=r"model.safetensors has a malformed header entry for w \(KeyError"):
        SafetensorsCheckpoint(str(tmp_path))


def test_hub_cache_snapshot_of_symlinks_reads_like_the_files(checkpoints, tmp_path):
    """A download leaves snapshots/<commit>/<file> as symlinks into blobs/: the reader follows them."""
    src = Path(checkpoints["gpt_oss-hub"])
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "0123abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        (blobs / f"blob{i}").write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(os.path.relpath(blobs / f"blob{i}", snapshot))
    linked, direct = SafetensorsCheckpoint(str(snapshot)), SafetensorsCheckpoint(str(src))
    assert linked.names() == direct.names()
    for name in direct.names():
        assert_bitwise_equal(linked.read(name), direct.read(name), name)
