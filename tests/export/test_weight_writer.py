"""The weight writer fills the data file with exactly the QAIC modules' parameters.

The exporter never builds those parameters: it writes each one block by block through its recipe (transposed,
split, stacked), straight from the checkpoint. Built here on a real tiny model, the parameters exist eagerly,
and every byte the writer puts in a memory-mapped file must equal them, for every architecture's recipes, with
blocks small enough that every tensor takes several, the last one partial."""

import threading
import time

import numpy as np
import pytest
import torch

from optimum_qaic_moe import tensors
from optimum_qaic_moe.exporters import external_data
from optimum_qaic_moe.exporters.main import resolve_architecture
from optimum_qaic_moe.moe.block import MoEDispatchConfig
from optimum_qaic_moe.tensors import RECIPE, Transposed, WeightWriter
from optimum_qaic_moe.testing import tiny_configs, tiny_model


@pytest.mark.parametrize("model_type", sorted(tiny_configs()))
@pytest.mark.parametrize("block_bytes", [1 << 20, 3 * 4 * 7])  # the default, and a few rows at a time
def test_written_bytes_equal_the_parameters(model_type, block_bytes, tmp_path, monkeypatch):
    monkeypatch.setattr(tensors, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(tensors, "TRANSPOSED_BLOCK_BYTES", block_bytes)
    model = tiny_model(model_type)
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    state = model.state_dict()
    graph = resolve_architecture(model_type).graph_module(model, MoEDispatchConfig("blocked", 3, 4), 64)
    writer = WeightWriter(names, lambda name, rows: state[name][rows].float())

    kinds = set()
    params = dict(graph.named_parameters(remove_duplicate=False))
    for i, (name, param) in enumerate(params.items()):
        out = np.memmap(tmp_path / f"{i}.bin", dtype=np.float32, mode="w+", shape=tuple(param.shape))
        writer.write(param, out)
        kinds.add(type(getattr(param, RECIPE, None)).__name__)
        np.testing.assert_array_equal(out, param.detach().numpy(), err_msg=name)
    assert {"Transposed", "NoneType"} <= kinds
    assert {"Local", "Stacked"} & kinds  # experts: a view of the fused tensor (5.x) or a stack (4.x)


def test_a_transposed_weight_is_written_through_small_blocks(tmp_path, monkeypatch):
    """A weight written transposed (the LM head: [vocab, hidden] read row by row, [hidden, vocab] written) whose
    row count is not a multiple of the block."""
    monkeypatch.setattr(tensors, "TRANSPOSED_BLOCK_BYTES", 5 * 6 * 4)  # 5 rows of 6
    source = torch.randn(23, 6)
    param = tensors.transposed(source)
    assert isinstance(getattr(param, RECIPE), Transposed)
    out = np.zeros((6, 23), dtype=np.float32)
    WeightWriter({id(source): "w"}, lambda name, rows: source[rows]).write(param, out)
    np.testing.assert_array_equal(out, source.t().numpy())


def tiny_weights(tmp_path):
    model = tiny_model("qwen3_moe")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    state = model.state_dict()
    graph = resolve_architecture("qwen3_moe").graph_module(model, MoEDispatchConfig("blocked", 3, 4), 64)
    return graph, names, state


def test_a_failing_export_stops_the_background_write(tmp_path, monkeypatch):
    """The weights are written while the graphs are traced; when the tracing fails, the write stops at its next
    block and its thread is gone before the error goes on (the caller then discards the directory)."""
    monkeypatch.setattr(tensors, "BLOCK_BYTES", 64)
    graph, names, state = tiny_weights(tmp_path)
    weights = external_data.lay_out([graph])
    reading = threading.Event()

    def read(name, rows):
        reading.set()
        time.sleep(0.001)
        return state[name][rows].float()

    with pytest.raises(RuntimeError, match="tracing failed"):
        with external_data.write_in_background(str(tmp_path), weights, WeightWriter(names, read)) as job:
            assert reading.wait(30)
            raise RuntimeError("tracing failed")
    assert not job._thread.is_alive()
    assert job.done < weights.size  # stopped part way (a write left to finish would have written it all)


def test_an_error_of_the_background_write_reaches_the_caller(tmp_path):
    graph, names, state = tiny_weights(tmp_path)
    weights = external_data.lay_out([graph])

    def read(name, rows):
        if "experts" in name:
            raise OSError(5, "Input/output error", "model.safetensors")
        return state[name][rows].float()

    with pytest.raises(OSError, match="Input/output error"):
        with external_data.write_in_background(str(tmp_path), weights, WeightWriter(names, read)):
            pass
