"""Expert MLPs in the layout the QAIC graphs want: ``[E, in, out]`` weights used as ``x @ W[e]``.

Nothing here is model specific; the architecture supplies the weights (views of the transformers parameters,
see ``optimum_qaic_moe.tensors``) and the gated activation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GatedActivation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (gate, up) -> hidden


def silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


class GatedExperts(nn.Module):
    """E gated MLPs: ``(x [G, R, H], experts: slice | LongTensor[G]) -> [G, R, H]`` runs expert ``experts[g]`` on
    rows ``x[g]``. A slice picks a contiguous range (views of the weights); a tensor gathers G weight sets."""

    def __init__(
        self,
        gate: torch.Tensor,
        up: torch.Tensor,
        down: torch.Tensor,
        activation: GatedActivation,
        gate_bias: torch.Tensor | None = None,
        up_bias: torch.Tensor | None = None,
        down_bias: torch.Tensor | None = None,
    ):
        super().__init__()
        self.gate, self.up, self.down = gate, up, down  # [E, H, I], [E, H, I], [E, I, H]
        self.gate_bias, self.up_bias, self.down_bias = gate_bias, up_bias, down_bias  # [E, I], [E, I], [E, H]
        self.activation = activation

    @property
    def num_experts(self) -> int:
        return self.gate.shape[0]

    def forward(self, x: torch.Tensor, experts: slice | torch.Tensor) -> torch.Tensor:
        gate = _affine(x, self.gate, self.gate_bias, experts)  # [G, R, I]
        up = _affine(x, self.up, self.up_bias, experts)
        return _affine(self.activation(gate, up), self.down, self.down_bias, experts)  # [G, R, H]


def _pick(weight: torch.Tensor, experts: slice | torch.Tensor) -> torch.Tensor:
    # index_select, not weight[tensor]: one Gather in the graph, where advanced indexing may export as
    # Transpose + GatherND + Transpose
    return weight[experts] if isinstance(experts, slice) else weight.index_select(0, experts)


def _affine(x, weight, bias, experts):
    out = torch.matmul(x, _pick(weight, experts))
    return out if bias is None else out + _pick(bias, experts).unsqueeze(1)


class Linear(nn.Module):
    """``x @ weight_t (+ bias)`` with the weight stored ``[in, out]``: the graph has no Transpose by a weight."""

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight_t, self.bias = weight_t, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x, self.weight_t)
        return out if self.bias is None else out + self.bias


class GatedMLP(nn.Module):
    """A dense gated MLP (dense layers, shared experts): down(act(gate(x), up(x)))."""

    def __init__(self, gate: Linear, up: Linear, down: Linear, activation: GatedActivation = silu_gate):
        super().__init__()
        self.gate, self.up, self.down, self.activation = gate, up, down, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.gate(x), self.up(x)))
