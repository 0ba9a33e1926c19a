"""The weight writer fills the data file with exactly the QAIC modules' parameters.

The exporter never builds those parameters: it writes each one block by block through its recipe (transposed,
split, stacked), straight from the checkpoint. Built here on a real tiny model, the parameters exist eagerly,
and every byte the writer puts in a memory-mapped file must equal them, for every architecture's recipes, with
blocks small enough that every tensor takes several, the last one partial."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from optimum_qaic_moe import tensors
from optimum_qaic_moe.exporters import external_data
from optimum_qaic_moe.exporters.main import resolve_architecture
from optimum_qaic_moe.moe.block import MoEDispatchConfig
from optimum_qaic_moe.settings import UserError
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


def tiny_weights():
    model = tiny_model("qwen3_moe")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    state = model.state_dict()
    graph = resolve_architecture("qwen3_moe").graph_module(model, MoEDispatchConfig("blocked", 3, 4), 64)
    return graph, names, state


def alive(pid):
    """Whether pid is a live process (a zombie waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("fork", [True, False])
def test_the_background_write_writes_what_the_writer_writes(tmp_path, monkeypatch, fork):
    """In a forked child (Linux) or before the body (elsewhere): the same bytes as writing in this process."""
    monkeypatch.setattr(external_data, "FORK", fork)
    graph, names, state = tiny_weights()
    weights = external_data.lay_out([graph])
    writer = WeightWriter(names, lambda name, rows: state[name][rows].float())
    (tmp_path / "here").mkdir()
    external_data.write(str(tmp_path / "here"), weights, writer)
    with external_data.write_in_background(str(tmp_path), weights, writer) as job:
        if fork:
            assert job.pid != os.getpid()
            job.wait()
            assert job.done == sum(external_data._nbytes(shape) for _, shape in weights.layout.values())
        else:
            assert job is None
    data = (tmp_path / "weights.data").read_bytes()
    assert len(data) == weights.size and data == (tmp_path / "here" / "weights.data").read_bytes()


def test_a_failing_export_kills_the_background_write(tmp_path):
    """The weights are written while the graphs are traced; when the tracing fails, the writing process is killed
    and reaped before the error goes on (the caller then discards the directory)."""
    graph, names, state = tiny_weights()
    weights = external_data.lay_out([graph])

    def slow_read(name, rows):  # runs in the child
        time.sleep(0.05)
        return state[name][rows].float()

    with pytest.raises(RuntimeError, match="tracing failed"):
        with external_data.write_in_background(str(tmp_path), weights, WeightWriter(names, slow_read)) as job:
            child = job.pid
            assert alive(child)
            raise RuntimeError("tracing failed")
    assert job.pid is None and not alive(child)


def test_an_error_of_the_background_write_reaches_the_caller_as_raised(tmp_path):
    graph, names, state = tiny_weights()
    weights = external_data.lay_out([graph])

    def read(name, rows):
        if "experts" in name:
            raise UserError(f"{name} is truncated: re-download the checkpoint")
        return state[name][rows].float()

    with pytest.raises(UserError, match="is truncated: re-download the checkpoint"):
        with external_data.write_in_background(str(tmp_path), weights, WeightWriter(names, read)) as job:
            job.wait()


def test_a_writer_killed_by_a_signal_is_an_error(tmp_path):
    graph, names, state = tiny_weights()
    weights = external_data.lay_out([graph])

    def read(name, rows):
        os.kill(os.getpid(), signal.SIGKILL)  # e.g. the kernel's OOM killer

    with pytest.raises(RuntimeError, match="the process writing weights.data died \\(killed by SIGKILL\\)"):
        with external_data.write_in_background(str(tmp_path), weights, WeightWriter(names, read)) as job:
            job.wait()


def test_the_writer_dies_with_a_killed_export(tmp_path):
    """SIGKILL leaves the export no chance to stop its writer: the kernel kills the writer with it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_weight_writer import tiny_weights
        from optimum_qaic_moe.exporters import external_data
        from optimum_qaic_moe.tensors import WeightWriter
        graph, names, state = tiny_weights()
        def read(name, rows):
            time.sleep(600)  # the writer is still at work when the export dies
        weights = external_data.lay_out([graph])
        with external_data.write_in_background({str(tmp_path)!r}, weights, WeightWriter(names, read)) as job:
            print(job.pid, flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert alive(child)
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child)
