"""transformers' own forward, with the weights brought in one decoder layer at a time.

The model is the one the export traced, on the meta device. Embedding, final norm and head are read for the
whole run; each decoder layer's parameters are read from the weight source just before the layer runs and dropped
right after, so the reference costs one layer of weights at a time (none when the source maps float32 data).
Non-persistent buffers (rotary ``inv_freq``) are not in checkpoints: the rotary module is rebuilt on the CPU.
"""

from __future__ import annotations

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


@contextmanager
def _materialized(entries, read: ReadRows) -> Iterator[None]:
    saved = [(module, name, module._parameters[name]) for module, name, _ in entries]
    for module, name, full in entries:
        _set(module, name, read(full, None))
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


def reference_logits(model: nn.Module, arch, read: ReadRows, ids: np.ndarray) -> np.ndarray:
    """transformers' logits [B, n, V] over the full sequences ``ids`` [B, n], streaming layer weights."""
    layers = arch.decoder_layers(model)
    rotary = arch.rotary_embedding(model)
    _replace_module(model, rotary, type(rotary)(config=model.config))
    hooks = []
    for _i, layer in enumerate(layers):
        entries = list(_params_of(layer, _prefix_of(model, layer), []))
        hooks.append(layer.register_forward_pre_hook(_enter(entries, read)))
        hooks.append(layer.register_forward_hook(_leave(entries)))
    try:
        with _materialized(list(_params_of(model, "", layers)), read), torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids), use_cache=False)
        return out.logits.float().numpy()
    finally:
        for h in hooks:
            h.remove()
        _replace_module(model, next(m for m in model.modules() if type(m) is type(rotary)), rotary)


def _prefix_of(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name + "."
    raise ValueError("module not found in the model")


def _enter(entries, read):
    def hook(module, args):
        module._qaic_saved = [(m, n, m._parameters[n]) for m, n, _ in entries]
        for m, n, full in entries:
            _set(m, n, read(full, None))

    return hook


def _leave(entries):
    def hook(module, args, output):
        for m, n, meta in module._qaic_saved:
            m._parameters[n] = meta
        del module._qaic_saved

    return hook
