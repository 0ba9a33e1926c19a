"""Export configs: the names, shapes and example inputs of the QAIC causal-LM graphs, and the compiler's
side files (specializations.json, custom_io.yaml). Registered per model_type through the plugin hook and with
Optimum's TasksManager under the exporter name ``qaic``."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Dict, List


class QAICCausalLMExportConfig:
    """Graph contract of DESIGN.md section 4 for a decoder-only MoE LM.

    Optimum's TasksManager builds it as ``cls(config, use_past=True, task="text-generation")``. The graphs
    always carry the KV cache: the QAIC contract has no cache-less variant."""

    SUPPORTED_TASKS = ("text-generation-with-past",)
    SUPPORTS_PAST = True

    def __init__(self, config, task: str = "text-generation-with-past", use_past: bool = True, **kwargs):
        if task.replace("-with-past", "") != "text-generation" or not use_past:
            raise ValueError(f"task {task!r} is not supported: use text-generation-with-past")
        self._config = config
        self.task = "text-generation-with-past"

    @property
    def num_layers(self) -> int:
        return self._config.num_hidden_layers

    @property
    def inputs(self) -> Dict[str, Dict[int, str]]:
        names = OrderedDict(input_ids={0: "batch_size", 1: "seq_len"}, position_ids={0: "batch_size", 1: "seq_len"})
        for i in range(self.num_layers):
            names[f"past_key.{i}"] = {0: "batch_size", 2: "ctx_len"}
            names[f"past_value.{i}"] = {0: "batch_size", 2: "ctx_len"}
        return names

    @property
    def outputs(self) -> Dict[str, Dict[int, str]]:
        names = OrderedDict(logits={0: "batch_size"})
        for i in range(self.num_layers):
            names[f"past_key.{i}_RetainedState"] = {0: "batch_size", 2: "ctx_len"}
            names[f"past_value.{i}_RetainedState"] = {0: "batch_size", 2: "ctx_len"}
        return names

    @property
    def kv_names(self) -> List[str]:
        return [n for n in self.inputs if n.startswith("past_")] + [n for n in self.outputs if n.startswith("past_")]

    def cache_shape(self, batch_size: int, cache_length: int):
        c = self._config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return (batch_size, c.num_key_value_heads, cache_length, head_dim)

    def example_inputs(self, batch_size: int, seq_len: int, cache_lengths: List[int]):
        """(input_ids, position_ids, [past_key.0, past_value.0, ...]) for tracing a graph of one seq_len."""
        import torch

        input_ids = torch.zeros(batch_size, seq_len, dtype=torch.int64)
        position_ids = torch.arange(seq_len, dtype=torch.int64).expand(batch_size, seq_len).contiguous()
        past = []
        for length in cache_lengths:
            past += [torch.zeros(self.cache_shape(batch_size, length)) for _ in range(2)]
        return input_ids, position_ids, past

    def write_specializations(self, path, batch_size: int, seq_len: int, ctx_len: int) -> None:
        spec = {"specializations": [{"batch_size": str(batch_size), "seq_len": str(seq_len),
                                     "ctx_len": str(ctx_len)}]}
        with open(path, "w") as f:
            json.dump(spec, f, indent=2)
            f.write("\n")

    def write_custom_io(self, path, mxint8_kv_cache: bool = False) -> None:
        import yaml

        precision = "mxint8" if mxint8_kv_cache else "float16"
        with open(path, "w") as f:
            yaml.safe_dump([{"IOName": name, "Precision": precision} for name in self.kv_names], f,
                           sort_keys=False)
