"""The I/O contract of the QAIC causal-LM graphs: names, shapes, symbolic dims, example inputs, and the compiler's
side files (specializations.json, custom_io.yaml).

Symbolic dims follow QEfficient's names: ``ctx_len`` (and ``sliding_window`` for ring-cache layers) in both graphs,
``batch_size`` in decode. The prefill graph's batch and sequence length stay static: its MoE dispatch is unrolled
over the T = batch x seq_len tokens. One graph serves every context length; specializations.json binds each
symbolic dim once per requested context length.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Architecture

CTX_DIM, WINDOW_DIM, BATCH_DIM = "ctx_len", "sliding_window", "batch_size"


class QAICCausalLMExportConfig:
    """Graph contract of a decoder-only MoE LM. Optimum's TasksManager builds it as ``cls(config, task=...)``;
    the architecture (cache shapes, which layers are rings) comes from the class or the ``architecture`` argument.
    The graphs always carry the KV cache: the QAIC contract has no cache-less variant."""

    SUPPORTED_TASKS = ("text-generation-with-past",)
    SUPPORTS_PAST = True
    architecture: Architecture | None = None  # set per model_type when registered

    def __init__(
        self, config, task: str = "text-generation-with-past", use_past: bool = True, architecture=None, **kwargs
    ):
        if task.replace("-with-past", "") != "text-generation" or not use_past:
            raise ValueError(f"task {task!r} is not supported: use text-generation-with-past")
        self._config = config
        self.task = "text-generation-with-past"
        self.architecture = architecture or type(self).architecture

    @property
    def num_layers(self) -> int:
        return self._config.num_hidden_layers

    def cache_dims(self, windows: Sequence[bool], decode: bool) -> list[dict[int, str]]:
        """Per layer: the symbolic dims of its cache inputs (ring layers: sliding_window, others: ctx_len)."""
        dims = []
        for ring in windows:
            d = {2: WINDOW_DIM if ring else CTX_DIM}
            if decode:
                d[0] = BATCH_DIM
            dims.append(d)
        return dims

    def input_names(self) -> list[str]:
        names = ["input_ids", "position_ids"]
        for i in range(self.num_layers):
            names += [f"past_key.{i}", f"past_value.{i}"]
        return names

    def output_names(self) -> list[str]:
        return ["logits"] + [f"{n}_RetainedState" for n in self.input_names()[2:]]

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        """Optimum's export-config interface: input name -> {axis: symbolic dim} (the decode graph's)."""
        return OrderedDict(
            (n, {0: BATCH_DIM, 2: CTX_DIM} if n.startswith("past_") else {0: BATCH_DIM}) for n in self.input_names()
        )

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return OrderedDict(
            (n, {0: BATCH_DIM, 2: CTX_DIM} if n.startswith("past_") else {0: BATCH_DIM}) for n in self.output_names()
        )

    @property
    def kv_names(self) -> list[str]:
        return [n for n in self.input_names() if n.startswith("past_")] + [
            n for n in self.output_names() if n.startswith("past_")
        ]

    def cache_shapes(self, batch_size: int, cache_lengths: Sequence[int]) -> dict[str, tuple]:
        """{past_key.i / past_value.i: shape} for one context length."""
        if self.architecture is None:  # the base class, built without architecture=
            raise TypeError(f"{type(self).__name__} has no architecture: pass architecture= to know the cache shapes")
        shapes = {}
        for i, length in enumerate(cache_lengths):
            key, value = self.architecture.cache_shapes(self._config, batch_size, length)
            shapes[f"past_key.{i}"], shapes[f"past_value.{i}"] = tuple(key), tuple(value)
        return shapes

    def example_inputs(self, batch_size: int, seq_len: int, cache_lengths: Sequence[int], device="cpu"):
        """(input_ids, position_ids, [past_key.0, past_value.0, ...]) for tracing a graph of one seq_len."""
        import torch

        input_ids = torch.zeros(batch_size, seq_len, dtype=torch.int64, device=device)
        position_ids = torch.arange(seq_len, dtype=torch.int64, device=device).expand(batch_size, seq_len)
        past = [torch.zeros(shape, device=device) for shape in self.cache_shapes(batch_size, cache_lengths).values()]
        return input_ids, position_ids.contiguous(), past

    def specializations(self, batch_size: int, ctx_lens: Sequence[int], window: int | None, decode: bool):
        """One entry per context length, binding exactly the graph's symbolic dims (values as strings)."""
        out = []
        for ctx in ctx_lens:
            spec = {BATCH_DIM: str(batch_size)} if decode else {}
            spec[CTX_DIM] = str(ctx)
            if window is not None:
                spec[WINDOW_DIM] = str(min(window, ctx))
            out.append(spec)
        return {"specializations": out}

    def write_specializations(
        self, path, batch_size: int, ctx_lens: Sequence[int], window: int | None, decode: bool
    ) -> None:
        with open(path, "w") as f:
            json.dump(self.specializations(batch_size, ctx_lens, window, decode), f, indent=2)
            f.write("\n")

    def write_custom_io(self, path, mxint8_kv_cache: bool = False) -> None:
        """The KV cache crosses the device boundary in fp16 (or MXINT8), not the graph's float32."""
        precision = "mxint8" if mxint8_kv_cache else "float16"
        with open(path, "w") as f:
            for name in self.kv_names:
                f.write(f" - IOName: {name}\n   Precision: {precision}\n\n")
