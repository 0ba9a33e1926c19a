"""transformers' own forward, with the weights brought in one decoder layer at a time.

The model is the one the export traced, on the meta device. Embedding, final norm and head are read for the
whole run; each decoder layer's parameters are read from the weight source just before the layer runs and dropped
right after. Non-persistent buffers (rotary ``inv_freq``) are not in checkpoints: the rotary module is rebuilt on
the CPU.

With ``scratch_dir``, the parameters are not held in anonymous memory: they are converted to float32 from the
checkpoint (a block of rows at a time) into a scratch file in that directory and used as a memory map of it, so
their pages are file-backed, which the kernel can write back and drop under pressure. One file holds embedding,
norm and head; a second one decoder layer, rewritten for each layer. At Qwen3-30B-A3B's shapes each is about
2.3 GiB (a layer's experts are 2.25 GiB) that would otherwise be anonymous. The values still come from the
checkpoint through the weight source, never from the export's own ``weights.data``: the reference stays
independent of the export's weight layout (transposes, fused projections, the per-graph recipe of
``tensors.py``), which is part of what it checks.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

ReadRows = Callable[..., torch.Tensor]


def _set(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module._parameters[name] = nn.Parameter(tensor, requires_grad=False)


def _params_of(root: nn.Module, prefix: str, exclude: list[nn.Module]):
    """(module, attribute name, full name) of root's parameters, skipping the subtrees in exclude."""
    skip = {id(m) for m in exclude}
    stack = [(prefix, root)]
    while stack:
        path, module = stack.pop()
        if id(module) in skip:
            continue
        for name, p in module._parameters.items():
            if p is not None:
                yield module, name, f"{path}{name}"
        stack += [(f"{path}{child_name}.", child) for child_name, child in module._modules.items() if child is not None]


SCRATCH_BLOCK = 64 << 20  # bytes of float32 rows converted at a time into a scratch file


class _Store:
    """Where materialized parameters live: anonymous tensors, or a scratch file's memory map (see the module
    docstring). ``load`` returns {id of the meta parameter: float32 tensor}; a parameter shared by several modules
    (tied embedding and head) is read once."""

    def __init__(self, read: ReadRows, scratch_dir: str | None, tag: str):
        self.read, self.path = read, None
        if scratch_dir is not None:
            fd, self.path = tempfile.mkstemp(prefix=f".reference-{tag}-", suffix=".tmp", dir=scratch_dir)
            os.close(fd)

    def load(self, entries) -> dict[int, torch.Tensor]:
        unique: dict[int, tuple[str, torch.Tensor]] = {}
        for module, name, full in entries:
            unique.setdefault(id(module._parameters[name]), (full, module._parameters[name]))
        if self.path is None:
            return {key: self.read(full, None) for key, (full, _) in unique.items()}
        layout, size = {}, 0
        for key, (_, meta) in unique.items():
            layout[key] = size
            size += -(-meta.numel() * 4 // 4096) * 4096
        with open(self.path, "r+b") as f:
            f.truncate(0)  # the previous contents' pages are dropped, not written back
            f.truncate(max(size, 1))
        tensors = {}
        for key, (full, meta) in unique.items():
            shape = tuple(meta.shape)
            if meta.numel() == 0:
                tensors[key] = torch.zeros(shape)
                continue
            mapped = np.memmap(self.path, dtype=np.float32, mode="r+", offset=layout[key], shape=shape)
            out = torch.from_numpy(mapped)
            if out.dim() == 0:
                out.copy_(self.read(full, None).reshape(()))
            else:
                per_row = max(1, out[0].numel() * 4)
                step = max(1, SCRATCH_BLOCK // per_row)
                for start in range(0, shape[0], step):
                    rows = slice(start, min(start + step, shape[0]))
                    out[rows] = self.read(full, rows)
            tensors[key] = out
        return tensors

    def close(self) -> None:
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)


@contextmanager
def _materialized(entries, store: _Store) -> Iterator[None]:
    saved = [(module, name, module._parameters[name]) for module, name, _ in entries]
    tensors = store.load(entries)
    for module, name, meta in saved:
        _set(module, name, tensors[id(meta)])
    del tensors
    try:
        yield
    finally:
        for module, name, meta in saved:
            module._parameters[name] = meta


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for module in root.modules():
        for name, child in module._modules.items():
            if child is old:
                module._modules[name] = new


def reference_logits(
    model: nn.Module, arch, read: ReadRows, ids: np.ndarray, last: int | None = None, scratch_dir: str | None = None
) -> np.ndarray:
    """transformers' logits [B, n, V] over the full sequences ``ids`` [B, n], streaming layer weights; with
    ``last``, only the last ``last`` positions' [B, last, V] (the head runs on those rows only). ``scratch_dir``:
    keep the weights in scratch files there, memory-mapped (see the module docstring)."""
    layers = arch.decoder_layers(model)
    rotary = arch.rotary_embedding(model)
    _replace_module(model, rotary, type(rotary)(config=model.config))
    outer, layer_store = _Store(read, scratch_dir, "outer"), _Store(read, scratch_dir, "layer")
    hooks = []
    for layer in layers:
        entries = list(_params_of(layer, _prefix_of(model, layer), []))
        hooks.append(layer.register_forward_pre_hook(_enter(entries, layer_store)))
        hooks.append(layer.register_forward_hook(_leave(entries)))
    kwargs = {"input_ids": torch.from_numpy(ids), "use_cache": False}
    if last is not None:
        kwargs["logits_to_keep"] = last
    try:
        with _materialized(list(_params_of(model, "", layers)), outer), torch.no_grad():
            out = model(**kwargs)
            logits = out.logits.float().numpy().copy()  # not a view of anything the model keeps
        if last is not None and logits.shape[1] != last:
            logits = logits[:, -last:]
        return logits
    finally:
        for h in hooks:
            h.remove()
        _replace_module(model, next(m for m in model.modules() if type(m) is type(rotary)), rotary)
        outer.close()
        layer_store.close()


def _prefix_of(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name + "."
    raise ValueError("module not found in the model")


def _enter(entries, store: _Store):
    def hook(module, args):
        module._qaic_saved = [(m, n, m._parameters[n]) for m, n, _ in entries]
        tensors = store.load(entries)
        for m, n, meta in module._qaic_saved:
            _set(m, n, tensors[id(meta)])

    return hook


def _leave(entries):
    def hook(module, args, output):
        for m, n, meta in module._qaic_saved:
            m._parameters[n] = meta
        del module._qaic_saved

    return hook
