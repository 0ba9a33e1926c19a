"""Why the export driver uses the torch.export-based (dynamo) exporter: both exporters side by side on one model.

    python benchmarks/exporter_choice.py [--layers 4] [--hidden 1024] [--experts 64]

Exports the prefill graph (blocked MoE) of one random Qwen3-MoE checkpoint with each exporter in its own
subprocess, and prints export seconds, the child's peak RSS, the node count, and whether onnxruntime's logits
match transformers. The TorchScript exporter (dynamo=False) is deprecated; it is hooked up here, and only here,
through torch.onnx.register_custom_op_symbolic so the custom ops stay com.qualcomm.cloud nodes.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time, torch, numpy as np, onnx, onnxruntime as ort
from transformers import AutoModelForCausalLM
from optimum_qaic_moe.plugins import get_architectures
from optimum_qaic_moe.moe.block import MoEDispatchConfig
from optimum_qaic_moe.ops import QAIC_DOMAIN, onnx_functions
from optimum_qaic_moe.exporters.onnx_export import export_onnx, check_onnx

exporter, model_dir, path, seq, ctx = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
arch = get_architectures()["qwen3_moe"]
model = arch.graph_module(hf, MoEDispatchConfig("blocked", 16, 64), ctx).eval()
cfg = arch.export_config(hf.config)
args = cfg.example_inputs(1, seq, arch.cache_lengths(hf, ctx))
names_in, names_out = cfg.input_names(), cfg.output_names()
t0 = time.perf_counter()
with torch.no_grad():
    if exporter == "dynamo":
        export_onnx(model, args, path, names_in, names_out, opset=18)
    else:
        from torch.onnx import register_custom_op_symbolic
        def symbolic(op):
            return lambda g, *inputs: g.op(f"{QAIC_DOMAIN}::{op}", *inputs)
        for onnx_name, torch_name in [("CtxScatter", "ctx_scatter"), ("CtxGather", "ctx_gather"),
                                      ("CtxScatter3D", "ctx_scatter_3d"), ("CtxScatter3DInt", "ctx_scatter_3d_int"),
                                      ("CtxGather3D", "ctx_gather_3d")]:
            register_custom_op_symbolic(f"qaic::{torch_name}", symbolic(onnx_name), 18)
        register_custom_op_symbolic("qaic::rms_norm", lambda g, x, w, eps: g.op(
            "com.qti.aisw.onnx::CustomRMSNorm", x, w, epsilon_f=eps), 18)
        class Flat(torch.nn.Module):
            def __init__(self, m):
                super().__init__(); self.m = m
            def forward(self, ids, pos, *past):
                return self.m(ids, pos, list(past))
        torch.onnx.export(Flat(model), (args[0], args[1], *args[2]), path, input_names=names_in,
                          output_names=names_out, opset_version=18, dynamo=False,
                          custom_opsets={QAIC_DOMAIN: 1, "com.qti.aisw.onnx": 1})
        m = onnx.load(path)
        used = {(n.domain, n.op_type) for n in m.graph.node}
        m.functions.extend(f for f in onnx_functions(18) if (f.domain, f.name) in used)
        onnx.save(m, path)
        check_onnx(path)
seconds = time.perf_counter() - t0
import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # export incl. load and checks, before the parity run
m = onnx.load(path, load_external_data=False)
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
ids = np.random.default_rng(0).integers(0, hf.config.vocab_size, (1, seq))
feeds = {"input_ids": ids, "position_ids": np.arange(seq)[None]}
feeds.update({n: a.numpy() for n, a in zip(names_in[2:], args[2])})
logits = sess.run(["logits"], feeds)[0][:, -1]
with torch.no_grad():
    ref = hf(torch.from_numpy(ids)).logits[:, -1].numpy()
err = float(np.abs(logits - ref).max() / np.abs(ref).max())
print(json.dumps({"seconds": seconds, "peak": peak, "nodes": len(m.graph.node), "err": err}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--ctx", type=int, default=1024)
    a = p.parse_args()

    from checkpoints import mid_size_shape, write_qwen3_moe_checkpoint

    root = tempfile.mkdtemp(prefix="qaic-exporters-")
    model_dir = os.path.join(root, "model")
    weight_bytes = write_qwen3_moe_checkpoint(model_dir, **mid_size_shape(a.layers, a.hidden, a.experts))
    print(
        f"Qwen3-MoE, {a.layers} layers, hidden {a.hidden}, {a.experts} experts top-8, "
        f"{weight_bytes / 2**30:.2f} GiB fp32; prefill graph seq {a.seq}, ctx {a.ctx}, 16 cores, chunk 64"
    )
    print("| exporter | export s | peak RSS GiB | nodes | max rel. logits error vs transformers |")
    print("|---|---:|---:|---:|---:|")
    for exporter in ("dynamo", "torchscript"):
        path = os.path.join(root, f"{exporter}.onnx")
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, exporter, model_dir, path, str(a.seq), str(a.ctx)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
            print(f"| {exporter} | failed: {last} | | | |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {exporter} | {r['seconds']:.1f} | {r['peak'] / 2**30:.2f} | {r['nodes']} | {r['err']:.1e} |")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
