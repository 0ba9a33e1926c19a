"""QAIC custom ops: eager == python-loop reference == onnxruntime on the exported function bodies, bit for bit.

Single-op graphs are exported once per (op, index dtype) through ``export_onnx`` with dynamic shapes; many
random shapes/inputs then run through the same onnxruntime session.
"""

from __future__ import annotations

import importlib
import os
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch.export import Dim

from optimum_qaic_moe import ops
from optimum_qaic_moe.exporters import onnx_export
from optimum_qaic_moe.exporters.onnx_export import ExportCheckError, check_onnx, export_onnx
from optimum_qaic_moe.ops import INT32_MAX, QAIC_DOMAIN

N_CASES = 25

# op_type -> (python wrapper, "scatter"/"gather", rank of data, data dtype)
OPS = {
    "CtxScatter": (ops.ctx_scatter, "scatter", 4, torch.float32),
    "CtxGather": (ops.ctx_gather, "gather", 4, torch.float32),
    "CtxScatter3D": (ops.ctx_scatter_3d, "scatter", 3, torch.float32),
    "CtxScatter3DInt": (ops.ctx_scatter_3d_int, "scatter", 3, torch.int32),
    "CtxGather3D": (ops.ctx_gather_3d, "gather", 3, torch.float32),
}
OPS_BY_FN = {v[0]: v for v in OPS.values()}
IDX_DTYPES = {"int32": torch.int32, "int64": torch.int64}


# ------------------------------------------------------------------------------------------------------
# independent reference: straightforward python loops
# ------------------------------------------------------------------------------------------------------


def ref_op(op_type, data, idx, upd=None):
    _, kind, rank, _ = OPS[op_type]
    B, P = idx.shape
    if kind == "scatter":
        out = data.clone()
        for b in range(B):
            for p in range(P):
                q = int(idx[b, p])
                if q == INT32_MAX:
                    continue
                if rank == 4:
                    out[b, :, q, :] = upd[b, :, p, :]
                else:
                    out[b, q, :] = upd[b, p, :]
        return out
    if rank == 4:
        out = torch.empty((B, data.shape[1], P, data.shape[3]), dtype=data.dtype)
    else:
        out = torch.empty((B, P, data.shape[2]), dtype=data.dtype)
    for b in range(B):
        for p in range(P):
            q = int(idx[b, p])
            q = 0 if q == INT32_MAX else q
            if rank == 4:
                out[b, :, p, :] = data[b, :, q, :]
            else:
                out[b, p, :] = data[b, q, :]
    return out


# ------------------------------------------------------------------------------------------------------
# random cases
# ------------------------------------------------------------------------------------------------------


def _values(shape, dtype, gen):
    if dtype == torch.int32:
        return torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, generator=gen)
    x = torch.randn(shape, generator=gen)
    if x.numel():
        # specials must survive bit for bit too
        flat = x.view(-1)
        picks = torch.randint(0, flat.numel(), (min(4, flat.numel()),), generator=gen)
        for i, v in zip(picks.tolist(), [float("nan"), float("inf"), -0.0, float("-inf")]):
            flat[i] = v
    return x


def random_case(op_type, idx_dtype, rng: random.Random, gen: torch.Generator):
    """(inputs tuple, sentinel fraction). Batch > 1; scatter positions distinct per batch row."""
    _, kind, rank, dtype = OPS[op_type]
    B, H, S, D = rng.randint(2, 4), rng.randint(1, 4), rng.randint(1, 12), rng.randint(1, 6)
    frac = rng.choice([0.0, 1.0, rng.random()])
    data_shape = (B, H, S, D) if rank == 4 else (B, S, D)
    data = _values(data_shape, dtype, gen)
    if kind == "scatter":
        P = rng.randint(0, S)
        rows = [rng.sample(range(S), P) for _ in range(B)]
    else:
        P = rng.randint(0, 2 * S + 1)
        rows = [[rng.randrange(S) for _ in range(P)] for _ in range(B)]
    rows = [[INT32_MAX if rng.random() < frac or frac == 1.0 else q for q in r] for r in rows]
    idx = torch.tensor(rows, dtype=idx_dtype).reshape(B, P)
    if kind == "gather":
        return (data, idx), frac
    upd = _values((B, H, P, D) if rank == 4 else (B, P, D), dtype, gen)
    return (data, idx, upd), frac


def same_bits(a, b) -> bool:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    bits = {4: np.int32, 8: np.int64}[a.dtype.itemsize]
    return np.array_equal(a.view(bits), b.view(bits))


# ------------------------------------------------------------------------------------------------------
# single-op export (dynamic shapes), cached per (op, index dtype)
# ------------------------------------------------------------------------------------------------------


class OneOp2(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, data, idx):
        return self.fn(data, idx)


class OneOp3(OneOp2):
    def forward(self, data, pos, upd):
        return self.fn(data, pos, upd)


def OneOp(fn):
    return (OneOp3 if OPS_BY_FN[fn][1] == "scatter" else OneOp2)(fn)


def _dynamic_export(op_type, idx_dtype, path):
    fn, kind, rank, dtype = OPS[op_type]
    b, h, s, d, p = Dim("b"), Dim("h"), Dim("s"), Dim("d"), Dim("p")
    # example sizes all distinct and >= 2 so that torch.export does not specialise any of them
    B, H, S, D, P = 2, 3, 7, 5, 4
    gen = torch.Generator().manual_seed(0)
    if rank == 4:
        data, data_dims = _values((B, H, S, D), dtype, gen), {0: b, 1: h, 2: s, 3: d}
        upd, upd_dims = _values((B, H, P, D), dtype, gen), {0: b, 1: h, 2: p, 3: d}
    else:
        data, data_dims = _values((B, S, D), dtype, gen), {0: b, 1: s, 2: d}
        upd, upd_dims = _values((B, P, D), dtype, gen), {0: b, 1: p, 2: d}
    idx = torch.tensor([[0, 6, 2, INT32_MAX], [5, 1, 3, 4]], dtype=idx_dtype)
    if kind == "scatter":
        args, names, dyn = (data, idx, upd), ["data", "pos", "upd"], (data_dims, {0: b, 1: p}, upd_dims)
    else:
        args, names, dyn = (data, idx), ["data", "idx"], (data_dims, {0: b, 1: p})
    return export_onnx(OneOp(fn), args, path, names, ["out"], opset=18, dynamic_shapes=dyn), names


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(op_type, idx_name):
        key = (op_type, idx_name)
        if key not in cache:
            path = tmp_path_factory.mktemp("single") / f"{op_type}_{idx_name}.onnx"
            path, names = _dynamic_export(op_type, IDX_DTYPES[idx_name], path)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            cache[key] = (path, names, sess)
        return cache[key]

    return get


# ------------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("idx_name", list(IDX_DTYPES))
@pytest.mark.parametrize("op_type", list(OPS))
def test_eager_matches_reference(op_type, idx_name):
    fn = OPS[op_type][0]
    rng, gen = random.Random(f"eager-{op_type}-{idx_name}"), torch.Generator().manual_seed(1)
    fracs = set()
    for _ in range(N_CASES):
        args, frac = random_case(op_type, IDX_DTYPES[idx_name], rng, gen)
        fracs.add(frac)
        before = [a.clone() for a in args]
        got = fn(*args)
        assert same_bits(got, ref_op(op_type, *args)), (op_type, [tuple(a.shape) for a in args], frac)
        # functional: inputs untouched, output is a new tensor
        assert all(same_bits(a, b) for a, b in zip(args, before))
        assert got.data_ptr() != args[0].data_ptr() or got.numel() == 0
    assert {0.0, 1.0} <= fracs


@pytest.mark.parametrize("idx_name", list(IDX_DTYPES))
@pytest.mark.parametrize("op_type", list(OPS))
def test_onnxruntime_matches_eager(exported, op_type, idx_name):
    fn = OPS[op_type][0]
    _, names, sess = exported(op_type, idx_name)
    rng, gen = random.Random(f"ort-{op_type}-{idx_name}"), torch.Generator().manual_seed(2)
    fracs = set()
    for _ in range(N_CASES):
        args, frac = random_case(op_type, IDX_DTYPES[idx_name], rng, gen)
        fracs.add(frac)
        (got,) = sess.run(["out"], {n: a.numpy() for n, a in zip(names, args)})
        want = fn(*args)
        assert same_bits(got, want), (op_type, [tuple(a.shape) for a in args], frac)
    assert {0.0, 1.0} <= fracs


@pytest.mark.parametrize("op_type", list(OPS))
def test_exported_graph_keeps_custom_node(exported, op_type):
    path, names, _ = exported(op_type, "int32")
    # checker and onnxruntime load, asserted explicitly
    onnx.checker.check_model(str(path), full_check=True)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))
    custom = [n for n in model.graph.node if n.domain == QAIC_DOMAIN]
    assert [n.op_type for n in custom] == [op_type]
    # not inlined: the body's ops are not in the main graph, the function is attached
    assert not {"ScatterND", "GatherND", "Pad"} & {n.op_type for n in model.graph.node}
    funcs = {(f.domain, f.name): f for f in model.functions}
    assert (QAIC_DOMAIN, op_type) in funcs
    assert {(o.domain, o.version) for o in model.opset_import} >= {(QAIC_DOMAIN, 1), ("", 18)}
    assert {(o.domain, o.version) for o in funcs[(QAIC_DOMAIN, op_type)].opset_import} == {("", 18)}
    assert [i.name for i in model.graph.input] == names
    assert [o.name for o in model.graph.output] == ["out"]


def _fixed_case(op_type, seed):
    fn, kind, rank, dtype = OPS[op_type]
    gen = torch.Generator().manual_seed(seed)
    B, H, S, D = 3, 2, 6, 4
    data = _values((B, H, S, D) if rank == 4 else (B, S, D), dtype, gen)
    if kind == "scatter":
        idx = torch.tensor([[4, INT32_MAX, 0], [INT32_MAX, INT32_MAX, INT32_MAX], [5, 1, 2]], dtype=torch.int32)
        upd = _values((B, H, 3, D) if rank == 4 else (B, 3, D), dtype, gen)
        return (data, idx, upd)
    idx = torch.tensor([[4, INT32_MAX, 0, 4], [INT32_MAX] * 4, [5, 1, 2, 3]], dtype=torch.int64)
    return (data, idx)


@pytest.mark.parametrize("opset", [14, 15, 17, 18, 20, 21, 23])
def test_onnx_functions_every_opset(opset):
    """The FunctionProtos alone (no torch export) in a hand-built model, for each supported opset."""
    funcs = ops.onnx_functions(opset)
    assert [(f.domain, f.name) for f in funcs] == [(QAIC_DOMAIN, name) for name in OPS] + [
        (ops.RMS_NORM_DOMAIN, "CustomRMSNorm")
    ]
    assert all(isinstance(f, onnx.FunctionProto) for f in funcs)
    assert all([(o.domain, o.version) for o in f.opset_import] == [("", opset)] for f in funcs)
    for i, op_type in enumerate(OPS):
        args = _fixed_case(op_type, seed=i)
        names = ["data", "pos", "upd"] if len(args) == 3 else ["data", "idx"]
        elem = {torch.float32: TensorProto.FLOAT, torch.int32: TensorProto.INT32, torch.int64: TensorProto.INT64}
        inputs = [helper.make_tensor_value_info(n, elem[a.dtype], list(a.shape)) for n, a in zip(names, args)]
        want = OPS[op_type][0](*args)
        graph = helper.make_graph(
            [helper.make_node(op_type, names, ["out"], domain=QAIC_DOMAIN)],
            "g",
            inputs,
            [helper.make_tensor_value_info("out", elem[want.dtype], list(want.shape))],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(QAIC_DOMAIN, 1)],
            functions=funcs,
        )
        model.ir_version = 8  # supported by every onnxruntime that supports these opsets
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
        assert same_bits(got, want), (opset, op_type)


def _rms_norm_model(opset, shape):
    graph = helper.make_graph(
        [helper.make_node("CustomRMSNorm", ["x", "w"], ["y"], domain=ops.RMS_NORM_DOMAIN, epsilon=1e-6)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape)),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [shape[-1]]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ops.RMS_NORM_DOMAIN, 1)],
        functions=ops.onnx_functions(opset),
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("opset", [14, 17, 18, 23])
def test_custom_rms_norm_matches_eager_and_transformers(opset):
    """The CustomRMSNorm body (ReduceMean's axes moved from attribute to input at opset 18) against the eager op
    and against transformers' RMSNorm."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRMSNorm

    gen = torch.Generator().manual_seed(opset)
    x, w = torch.randn(2, 5, 64, generator=gen) * 30, torch.randn(64, generator=gen)
    (got,) = _rms_norm_model(opset, x.shape).run(None, {"x": x.numpy(), "w": w.numpy()})
    eager = ops.rms_norm(x, w, 1e-6)
    np.testing.assert_allclose(got, eager.numpy(), rtol=1e-6, atol=1e-6)
    hf = Qwen3MoeRMSNorm(64, eps=1e-6)
    hf.weight.data = w
    np.testing.assert_allclose(eager.numpy(), hf(x).detach().numpy(), rtol=1e-6, atol=1e-6)


def test_cache_op_bodies_move_only_the_rows_they_touch():
    """No transpose, pad or slice of the cache: a call costs the rows it reads or writes, not the cache."""
    for f in ops.onnx_functions(18)[:5]:
        kinds = {n.op_type for n in f.node}
        assert not {"Transpose", "Pad"} & kinds, f.name
        slices = [n for n in f.node if n.op_type == "Slice"]
        assert all(n.input[1:3] == ["zero1", "one1"] for n in slices), f.name  # only data's slot 0


def test_onnx_functions_rejects_unsupported_opset():
    with pytest.raises(ValueError):
        ops.onnx_functions(13)


class AllFive(torch.nn.Module):
    def forward(self, cache, pos, new, table, ipos, ivals):
        cache2 = ops.ctx_scatter(cache, pos, new)  # [B,H,S,D]
        read = ops.ctx_gather(cache2, pos)  # [B,H,P,D]
        flat = read.transpose(1, 2).reshape(read.shape[0], read.shape[2], -1)  # [B,P,H*D]
        table2 = ops.ctx_scatter_3d(table, pos, flat)  # [B,S,H*D]
        back = ops.ctx_gather_3d(table2, pos)  # [B,P,H*D]
        itab = ops.ctx_scatter_3d_int(ivals, ipos, ipos.to(torch.int32).unsqueeze(-1).expand(-1, -1, 2).contiguous())
        return cache2, back * 2.0, table2, itab


def _all_five_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, H, S, D = 3, 2, 8, 4
    pos = torch.tensor([[7, 0, INT32_MAX], [2, 3, 4], [INT32_MAX] * 3], dtype=torch.int64)
    ipos = torch.tensor([[1, INT32_MAX], [0, 5], [INT32_MAX, 7]], dtype=torch.int32)
    return (
        _values((B, H, S, D), torch.float32, gen),
        pos,
        _values((B, H, 3, D), torch.float32, gen),
        _values((B, S, H * D), torch.float32, gen),
        ipos,
        _values((B, S, 2), torch.int32, gen),
    )


def test_module_with_all_five_ops(tmp_path):
    args = _all_five_inputs()
    in_names = ["cache", "pos", "new", "table", "ipos", "ivals"]
    out_names = ["cache_RetainedState", "back", "table_RetainedState", "itab"]
    path = export_onnx(AllFive(), args, tmp_path / "model.onnx", in_names, out_names, opset=18)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert sorted(n.op_type for n in model.graph.node if n.domain == QAIC_DOMAIN) == sorted(OPS)
    assert sorted(f.name for f in model.functions) == sorted(OPS)
    assert [i.name for i in model.graph.input] == in_names
    assert [o.name for o in model.graph.output] == out_names
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in range(3):
        args = _all_five_inputs(seed)
        got = sess.run(out_names, {n: a.numpy() for n, a in zip(in_names, args)})
        want = AllFive()(*args)
        for name, g, w in zip(out_names, got, want):
            assert same_bits(g, w), name


# ------------------------------------------------------------------------------------------------------
# export driver behaviour
# ------------------------------------------------------------------------------------------------------


@torch.library.custom_op("qaic_test::opaque", mutates_args=())
def _opaque(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_opaque.register_fake
def _(x):
    return torch.empty_like(x)


class Untranslatable(torch.nn.Module):
    def forward(self, x):
        return torch.ops.qaic_test.opaque(x) + 1


def test_failed_export_leaves_nothing(tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportCheckError, match="torch.onnx.export"):
        export_onnx(Untranslatable(), (torch.randn(2, 3),), out, ["x"], ["y"])
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_failed_check_leaves_nothing(tmp_path, monkeypatch):
    # Functions not attached -> the custom-node check must fail and nothing may be left behind.
    monkeypatch.setattr(onnx_export, "attach_functions", lambda model: [])
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportCheckError):
        export_onnx(OneOp(ops.ctx_gather_3d), _fixed_case("CtxGather3D", 0), out, ["data", "idx"], ["out"])
    assert os.listdir(tmp_path) == []
    # an existing file at the destination is left as it was
    out.write_bytes(b"previous")
    with pytest.raises(ExportCheckError):
        export_onnx(OneOp(ops.ctx_gather_3d), _fixed_case("CtxGather3D", 0), out, ["data", "idx"], ["out"])
    assert out.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_check_onnx_reports_problems(tmp_path):
    # custom node without function
    graph = helper.make_graph(
        [helper.make_node("CtxGather3D", ["data", "idx"], ["out"], domain=QAIC_DOMAIN)],
        "g",
        [
            helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 2, 3]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(QAIC_DOMAIN, 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "nofunc.onnx"))
    with pytest.raises(ExportCheckError, match="without a matching function"):
        check_onnx(tmp_path / "nofunc.onnx")
    # the same model with the function passes
    model.functions.extend(ops.onnx_functions(18))
    onnx.save(model, str(tmp_path / "ok.onnx"))
    check_onnx(tmp_path / "ok.onnx")
    # checker failure (type mismatch: Add of float and int64)
    bad = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
    )
    bad_model = helper.make_model(bad, opset_imports=[helper.make_opsetid("", 18)])
    bad_model.ir_version = 8
    onnx.save(bad_model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ExportCheckError, match="check_model"):
        check_onnx(tmp_path / "bad.onnx")
    with pytest.raises(ExportCheckError, match="no such file"):
        check_onnx(tmp_path / "missing.onnx")


class Weighted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(3)))

    def forward(self, idx):
        return ops.ctx_gather_3d(self.table.expand(idx.shape[0], -1, -1), idx)


def test_external_data_and_back(tmp_path, monkeypatch):
    idx = torch.tensor([[3, INT32_MAX, 63], [0, 1, 2]], dtype=torch.int64)
    out = tmp_path / "model.onnx"
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    export_onnx(Weighted(), (idx,), out, ["idx"], ["rows"])
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]
    proto = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"idx": idx.numpy()})
    assert same_bits(got, Weighted()(idx))
    # re-export small: single file, stale data file removed
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1536 * 1024 * 1024)
    export_onnx(Weighted(), (idx,), out, ["idx"], ["rows"])
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


class Passthrough(torch.nn.Module):
    def forward(self, x, y):
        z = x * 2
        return y, z, z


@pytest.mark.parametrize("optimize", [True, False])
def test_io_names_exact(tmp_path, optimize):
    # optimize=False used to rename the *input* y when y is returned unchanged; names must be exact anyway
    path = export_onnx(
        Passthrough(),
        (torch.randn(2, 3), torch.randn(2, 3)),
        tmp_path / "m.onnx",
        ["x", "y"],
        ["y_RetainedState", "z", "z_again"],
        optimize=optimize,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "y"]
    assert [o.name for o in sess.get_outputs()] == ["y_RetainedState", "z", "z_again"]
    x, y = np.ones((2, 3), np.float32), np.full((2, 3), 5, np.float32)
    got = sess.run(None, {"x": x, "y": y})
    assert np.array_equal(got[0], y) and np.array_equal(got[1], 2 * x) and np.array_equal(got[2], 2 * x)
    with pytest.raises(ExportCheckError, match="output_names"):
        export_onnx(Passthrough(), (torch.randn(2, 3), torch.randn(2, 3)), tmp_path / "n.onnx", ["x", "y"], ["a"])
    assert not (tmp_path / "n.onnx").exists()


def test_export_is_quiet_and_restores_mode(tmp_path, capfd):
    module = OneOp(ops.ctx_gather)
    module.train()
    export_onnx(module, _fixed_case("CtxGather", 0), tmp_path / "m.onnx", ["data", "idx"], ["out"])
    assert module.training
    captured = capfd.readouterr()
    assert captured.out == ""


def test_translation_table_emits_bare_nodes():
    table = ops.translation_table()
    names = [*ops.OP_NAMES.values(), "rms_norm"]
    assert set(table) == {getattr(torch.ops.qaic, name).default for name in names}
    # plain callables, not onnxscript functions with a body (those get inlined by the exporter)
    import onnxscript

    assert not any(isinstance(f, onnxscript.OnnxFunction) for f in table.values())


def test_private_names_we_rely_on():
    """Fails loudly if torch moves the private names used by ops/ and the export driver."""
    assert callable(torch._check)  # used in the fake (meta) implementations
    for name in onnx_export._NOISY_LOGGERS:  # loggers silenced during export
        importlib.import_module(name)
