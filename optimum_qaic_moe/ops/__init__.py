"""QAIC custom ops.

Each op exists twice, with identical semantics:

* a torch custom op in namespace ``qaic`` (eager implementation + fake implementation, so it traces under
  ``torch.export``), reached through the python wrappers below;
* an ONNX function in domain ``com.qualcomm.cloud`` (version 1) whose body uses only standard ONNX ops. The
  QAIC compiler recognises the node by its name; onnxruntime executes the function body.

``CustomRMSNorm`` (domain ``com.qti.aisw.onnx``, attribute ``epsilon``) is the RMSNorm kernel the compiler
knows; it keeps the norm one node, so its internal sum of squares is not an fp16 activation.

The sentinel ``INT32_MAX`` in an index tensor means "skip" for scatters and "read row 0" for gathers.
Index tensors may be int32 or int64, both in eager and in the graph (the function bodies cast to int64,
which ScatterND/GatherND require).

Nothing here is model specific.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "INT32_MAX",
    "QAIC_DOMAIN",
    "QAIC_DOMAIN_VERSION",
    "OP_NAMES",
    "ctx_scatter",
    "ctx_gather",
    "ctx_scatter_3d",
    "ctx_scatter_3d_int",
    "ctx_gather_3d",
    "rms_norm",
    "RMS_NORM_DOMAIN",
    "FUNCTION_DOMAINS",
    "onnx_functions",
    "translation_table",
]

INT32_MAX = 2**31 - 1
QAIC_DOMAIN = "com.qualcomm.cloud"
QAIC_DOMAIN_VERSION = 1
RMS_NORM_DOMAIN = "com.qti.aisw.onnx"
FUNCTION_DOMAINS = {QAIC_DOMAIN: QAIC_DOMAIN_VERSION, RMS_NORM_DOMAIN: 1}  # custom domains whose nodes we define

# ONNX op type (= function name) -> torch custom op name in namespace "qaic".
OP_NAMES = {
    "CtxScatter": "ctx_scatter",
    "CtxGather": "ctx_gather",
    "CtxScatter3D": "ctx_scatter_3d",
    "CtxScatter3DInt": "ctx_scatter_3d_int",
    "CtxGather3D": "ctx_gather_3d",
}

_INDEX_DTYPES = (torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------------------
# shape / dtype checks shared by eager and fake implementations
# --------------------------------------------------------------------------------------------------------


def _check_index(name: str, t: torch.Tensor, batch) -> None:
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name}: index tensor must be int32 or int64, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name}: index tensor must be [B, P], got shape {tuple(t.shape)}")
    torch._check(t.shape[0] == batch, lambda: f"{name}: index batch {t.shape[0]} != data batch {batch}")


def _check_scatter_4d(data, pos, upd):
    if data.dim() != 4 or upd.dim() != 4:
        raise ValueError(
            f"ctx_scatter: data and upd must be 4-D [B,H,S,D] / [B,H,P,D], got {tuple(data.shape)}, {tuple(upd.shape)}"
        )
    _check_index("ctx_scatter", pos, data.shape[0])
    if upd.dtype != data.dtype:
        raise TypeError(f"ctx_scatter: upd dtype {upd.dtype} != data dtype {data.dtype}")
    torch._check(upd.shape[0] == data.shape[0], lambda: "ctx_scatter: upd batch mismatch")
    torch._check(upd.shape[1] == data.shape[1], lambda: "ctx_scatter: upd head count mismatch")
    torch._check(upd.shape[2] == pos.shape[1], lambda: "ctx_scatter: upd P != pos P")
    torch._check(upd.shape[3] == data.shape[3], lambda: "ctx_scatter: upd D mismatch")


def _check_gather_4d(data, idx):
    if data.dim() != 4:
        raise ValueError(f"ctx_gather: data must be 4-D [B,H,S,D], got {tuple(data.shape)}")
    _check_index("ctx_gather", idx, data.shape[0])


def _check_scatter_3d(name, data, pos, upd, int_data: bool):
    if data.dim() != 3 or upd.dim() != 3:
        raise ValueError(
            f"{name}: data and upd must be 3-D [B,S,D] / [B,P,D], got {tuple(data.shape)}, {tuple(upd.shape)}"
        )
    _check_index(name, pos, data.shape[0])
    if upd.dtype != data.dtype:
        raise TypeError(f"{name}: upd dtype {upd.dtype} != data dtype {data.dtype}")
    if int_data and data.dtype != torch.int32:
        raise TypeError(f"{name}: data must be int32, got {data.dtype}")
    if not int_data and not data.dtype.is_floating_point:
        raise TypeError(f"{name}: data must be floating point (use ctx_scatter_3d_int for int32), got {data.dtype}")
    torch._check(upd.shape[0] == data.shape[0], lambda: f"{name}: upd batch mismatch")
    torch._check(upd.shape[1] == pos.shape[1], lambda: f"{name}: upd P != pos P")
    torch._check(upd.shape[2] == data.shape[2], lambda: f"{name}: upd D mismatch")


def _check_gather_3d(data, idx):
    if data.dim() != 3:
        raise ValueError(f"ctx_gather_3d: data must be 3-D [B,S,D], got {tuple(data.shape)}")
    _check_index("ctx_gather_3d", idx, data.shape[0])


# --------------------------------------------------------------------------------------------------------
# eager kernels (functional: never mutate inputs). They mirror the ONNX bodies: sentinel positions are
# redirected to a scratch row appended along S, which is sliced off afterwards; sentinel gather indices
# read row 0.
# --------------------------------------------------------------------------------------------------------


def _scatter_along(data: torch.Tensor, pos: torch.Tensor, upd: torch.Tensor, dim: int) -> torch.Tensor:
    """data[b, ..., pos[b,p] (at `dim`), ...] = upd[b, ..., p, ...]; pos == INT32_MAX skipped."""
    s = data.shape[dim]
    pad_shape = list(data.shape)
    pad_shape[dim] = 1
    padded = torch.cat([data, data.new_zeros(pad_shape)], dim=dim)
    p = torch.clamp(pos.to(torch.int64), max=s)  # sentinel -> scratch row s
    view = [p.shape[0]] + [1] * (data.dim() - 1)
    view[dim] = p.shape[1]
    index = p.reshape(view).expand(upd.shape)
    out = padded.scatter(dim, index, upd)
    return out.narrow(dim, 0, s).contiguous()


def _gather_along(data: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    i = idx.to(torch.int64)
    i = torch.where(i == INT32_MAX, torch.zeros_like(i), i)
    view = [i.shape[0]] + [1] * (data.dim() - 1)
    view[dim] = i.shape[1]
    out_shape = list(data.shape)
    out_shape[dim] = i.shape[1]
    return torch.gather(data, dim, i.reshape(view).expand(out_shape))


@torch.library.custom_op("qaic::ctx_scatter", mutates_args=())
def _ctx_scatter_op(data: torch.Tensor, pos: torch.Tensor, upd: torch.Tensor) -> torch.Tensor:
    _check_scatter_4d(data, pos, upd)
    return _scatter_along(data, pos, upd, dim=2)


@_ctx_scatter_op.register_fake
def _(data, pos, upd):
    _check_scatter_4d(data, pos, upd)
    return torch.empty_like(data)


@torch.library.custom_op("qaic::ctx_gather", mutates_args=())
def _ctx_gather_op(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    _check_gather_4d(data, idx)
    return _gather_along(data, idx, dim=2)


@_ctx_gather_op.register_fake
def _(data, idx):
    _check_gather_4d(data, idx)
    b, h, _, d = data.shape
    return data.new_empty((b, h, idx.shape[1], d))


@torch.library.custom_op("qaic::ctx_scatter_3d", mutates_args=())
def _ctx_scatter_3d_op(data: torch.Tensor, pos: torch.Tensor, upd: torch.Tensor) -> torch.Tensor:
    _check_scatter_3d("ctx_scatter_3d", data, pos, upd, int_data=False)
    return _scatter_along(data, pos, upd, dim=1)


@_ctx_scatter_3d_op.register_fake
def _(data, pos, upd):
    _check_scatter_3d("ctx_scatter_3d", data, pos, upd, int_data=False)
    return torch.empty_like(data)


@torch.library.custom_op("qaic::ctx_scatter_3d_int", mutates_args=())
def _ctx_scatter_3d_int_op(data: torch.Tensor, pos: torch.Tensor, upd: torch.Tensor) -> torch.Tensor:
    _check_scatter_3d("ctx_scatter_3d_int", data, pos, upd, int_data=True)
    return _scatter_along(data, pos, upd, dim=1)


@_ctx_scatter_3d_int_op.register_fake
def _(data, pos, upd):
    _check_scatter_3d("ctx_scatter_3d_int", data, pos, upd, int_data=True)
    return torch.empty_like(data)


@torch.library.custom_op("qaic::ctx_gather_3d", mutates_args=())
def _ctx_gather_3d_op(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    _check_gather_3d(data, idx)
    return _gather_along(data, idx, dim=1)


@_ctx_gather_3d_op.register_fake
def _(data, idx):
    _check_gather_3d(data, idx)
    b, _, d = data.shape
    return data.new_empty((b, idx.shape[1], d))


@torch.library.custom_op("qaic::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, epsilon: float) -> torch.Tensor:
    # The op sequence of the ONNX body (Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul).
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.reciprocal(torch.sqrt(variance + epsilon)))


@_rms_norm_op.register_fake
def _(x, weight, epsilon):
    return torch.empty_like(x)


# --------------------------------------------------------------------------------------------------------
# public python API
# --------------------------------------------------------------------------------------------------------


def ctx_scatter(data: torch.Tensor, pos: torch.Tensor, upd: torch.Tensor) -> torch.Tensor:
    """CtxScatter: data[B,H,S,D], pos[B,P] (int32/int64), upd[B,H,P,D] -> data with
    out[b,:,pos[b,p]] = upd[b,:,p]; pos == INT32_MAX rows are skipped. Returns a new tensor."""
    return torch.ops.qaic.ctx_scatter(data, pos, upd)


def ctx_gather(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """CtxGather: data[B,H,S,D], idx[B,P] -> out[B,H,P,D] = data[b,:,idx[b,p]]; INT32_MAX reads row 0."""
    return torch.ops.qaic.ctx_gather(data, idx)


def ctx_scatter_3d(data: torch.Tensor, pos: torch.Tensor, upd: torch.Tensor) -> torch.Tensor:
    """CtxScatter3D: data[B,S,D] (float), pos[B,P], upd[B,P,D] -> out[b,pos[b,p]] = upd[b,p];
    INT32_MAX skipped."""
    return torch.ops.qaic.ctx_scatter_3d(data, pos, upd)


def ctx_scatter_3d_int(data: torch.Tensor, pos: torch.Tensor, upd: torch.Tensor) -> torch.Tensor:
    """CtxScatter3DInt: CtxScatter3D for int32 data/upd."""
    return torch.ops.qaic.ctx_scatter_3d_int(data, pos, upd)


def ctx_gather_3d(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """CtxGather3D: data[B,S,D], idx[B,P] -> out[B,P,D] = data[b,idx[b,p]]; INT32_MAX reads row 0."""
    return torch.ops.qaic.ctx_gather_3d(data, idx)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, epsilon: float) -> torch.Tensor:
    """CustomRMSNorm: weight * x / sqrt(mean(x^2, -1) + epsilon) over the last dim."""
    return torch.ops.qaic.rms_norm(x, weight, float(epsilon))


# --------------------------------------------------------------------------------------------------------
# ONNX side
# --------------------------------------------------------------------------------------------------------


def onnx_functions(opset: int) -> list[onnx.FunctionProto]:
    """The FunctionProtos of every op here: the five com.qualcomm.cloud ops, then CustomRMSNorm (domain
    com.qti.aisw.onnx); bodies in the default domain at ``opset``."""
    from ._onnx_functions import build_functions

    return build_functions(opset)


def translation_table() -> dict:
    """{torch op overload: onnxscript function emitting the bare com.qualcomm.cloud node}, for
    ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``."""
    from ._onnx_functions import build_translation_table

    return build_translation_table()
