"""The QAIC modules' parameters as functions of the transformers model's parameters.

The QAIC graphs want weights laid out for the device: every matmul weight pre-transposed to ``[in, out]`` (no
Transpose node next to a weight), GPT-OSS's interleaved gate/up columns split, experts stacked as ``[E, ...]``.
Each such parameter is made here from the transformers parameters (a view where the layout allows, so an eager
rewrite costs no memory) and remembers how it was made. The exporter traces on the meta device and later
writes every parameter's bytes from the checkpoint through that recipe, one expert or one block of rows at a
time, so no layout is ever materialized in memory.

Recipes:
* ``Local(source, fn)``: ``fn`` acts within each dim-0 row (row r of the result comes from row r of source);
* ``Transposed(source)``: the transpose of a 2-D source;
* ``Stacked(sources, fn)``: row e is ``fn(sources[e])``.
A source is a transformers parameter (read by name) or another recipe's parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

ReadRows = Callable[[str, slice | None], torch.Tensor]  # (transformers parameter name, dim-0 rows) -> fp32
# Rows converted per step. Small on purpose: the block is read, converted to float32 and copied (often transposed)
# into the data file while it is still in the CPU cache; in micro-benchmarks of these copies 64 MiB blocks ran 2-4x
# slower than blocks of a few MiB.
BLOCK_BYTES = 8 << 20
TRANSPOSED_BLOCK_BYTES = 1 << 20  # a transposed write scatters each source row over the whole output
RECIPE = "qaic_recipe"  # the attribute a made parameter carries its recipe in


@dataclass(frozen=True)
class Local:
    source: torch.Tensor
    fn: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Transposed:
    source: torch.Tensor


@dataclass(frozen=True)
class Stacked:
    sources: Sequence[torch.Tensor]
    fn: Callable[[torch.Tensor], torch.Tensor]


def _tagged(value: torch.Tensor, recipe) -> nn.Parameter:
    param = nn.Parameter(value, requires_grad=False)
    setattr(param, RECIPE, recipe)  # nn.Parameter declares no such attribute
    return param


def local(source: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> nn.Parameter:
    """``fn(source)`` where fn keeps dim 0 (slices, transposes of the other dims): a view of source."""
    return _tagged(fn(source), Local(source, fn))


def transposed(source: torch.Tensor) -> nn.Parameter:
    """``source.T`` of a 2-D weight: a view of it."""
    return _tagged(source.t(), Transposed(source))


def stacked(sources: Sequence[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> nn.Parameter:
    """``stack([fn(s) for s in sources])``: a new tensor (transformers 4.x keeps experts as separate modules)."""
    with torch.no_grad():
        return _tagged(torch.stack([fn(s) for s in sources]), Stacked(list(sources), fn))


class WeightWriter:
    """Fills parameters of QAIC modules from the transformers parameters they were made of.

    ``names``: ``{id(transformers parameter): its state_dict name}``, taken from the transformers model before
    the QAIC modules were built; ``read(name, rows)`` returns float32 rows of that parameter (from a checkpoint
    or from an in-memory model). Parameters with neither a recipe nor a name were computed at build time (e.g.
    RoPE tables): ``own`` holds their data when the module has since moved to the meta device."""

    def __init__(self, names: dict[int, str], read: ReadRows, own: dict[int, torch.Tensor] | None = None):
        self.names, self.read, self.own = names, read, own or {}

    def sources(self, param: torch.Tensor) -> list[str]:
        """The transformers parameter names param is made of."""
        recipe = getattr(param, RECIPE, None)
        if recipe is None:
            return [self.names[id(param)]] if id(param) in self.names else []
        parents = recipe.sources if isinstance(recipe, Stacked) else [recipe.source]
        return [name for p in parents for name in self.sources(p)]

    def rows(self, param: torch.Tensor, rows: slice) -> torch.Tensor:
        recipe = getattr(param, RECIPE, None)
        if recipe is None:
            if id(param) in self.names:
                return self.read(self.names[id(param)], rows)
            if id(param) in self.own:
                return self.own[id(param)][rows].float()
            if param.is_meta:
                raise ValueError("a parameter with no data and no recipe: it cannot be written")
            return param.detach()[rows].float()
        if isinstance(recipe, Local):
            return recipe.fn(self.rows(recipe.source, rows))
        if isinstance(recipe, Stacked):
            picked = recipe.sources[rows]
            return torch.stack([recipe.fn(self.rows(s, slice(None))) for s in picked])
        raise ValueError("a transposed parameter cannot be read by rows; write it whole")

    def write(self, param: torch.Tensor, out: np.ndarray) -> None:
        """Fill ``out`` (float32, param's shape, e.g. a memory map of the data file) block by block."""
        dst = torch.from_numpy(out)  # shares out's memory
        recipe = getattr(param, RECIPE, None)
        if isinstance(recipe, Transposed):  # out[:, a:b] = source[a:b].T: contiguous reads, strided writes
            n = recipe.source.shape[0]
            step = _rows_per_block(recipe.source, TRANSPOSED_BLOCK_BYTES)
            for a in range(0, n, step):
                _copy(dst[:, a : a + step], self.rows(recipe.source, slice(a, a + step)).t())
            return
        if param.dim() == 0:
            dst.copy_(self.rows(param, slice(None)).reshape(()))
            return
        step = _rows_per_block(param, BLOCK_BYTES)
        for a in range(0, param.shape[0], step):
            _copy(dst[a : a + step], self.rows(param, slice(a, a + step)))


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` by way of torch's fast path for 2-D transposes (a contiguous 2-D destination, a transposed
    2-D source), which ran at 1.5-1.8 GB/s here where the same copy as one 3-D or strided-destination copy_ ran
    at 0.6-0.8 GB/s and numpy's assignment at 0.2-0.5 GB/s."""
    if src.is_contiguous():
        dst.copy_(src)
    elif src.dim() > 2:
        for d, s in zip(dst, src):
            _copy(d, s)
    elif src.dim() == 2 and not dst.is_contiguous():
        dst.copy_(src.contiguous())  # transposed into a small contiguous block first, then copied row by row
    else:
        dst.copy_(src)


def _rows_per_block(t: torch.Tensor, block_bytes: int) -> int:
    row_bytes = max(1, t[0].numel() * 4) if t.dim() else 4
    return max(1, block_bytes // row_bytes)
