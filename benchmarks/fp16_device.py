"""The exported graphs as the card runs them (fp16, ``-convert-to-fp16``), at positions past 8000 of an 8192 context.

    python benchmarks/fp16_device.py [--ctx 8192] [--prompt 8100] [--steps 16] [--old-package DIR]

For each architecture: a tiny random checkpoint, exported with prefill 128 and ctx 8192; a random prompt of 8100
tokens runs as 64 prefill chunks (the last padded), then 16 greedy decode steps at positions 8100..8115. The fp32
graphs choose the tokens; the fp16-emulating copies (optimum_qaic_moe.exporters.fp16) are fed the same ones.
Printed per architecture: whether every fp16 logit is finite, the largest |fp16 - fp32| relative to the logits'
scale, the steps whose greedy token agrees, fp32 against transformers, and the node counts of both graphs
(top-level nodes + nodes inside the decoder-layer functions).

``--old-package DIR``: also export with the optimum_qaic_moe package found in DIR (e.g. a `git worktree` of an
earlier commit) and measure its graphs the same way: "before" next to "after".
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

EXPORT = """
import sys
sys.path.insert(0, sys.argv[1])
from optimum_qaic_moe.exporters import main
from optimum_qaic_moe.settings import ExportSettings
export = getattr(main, "run_export", None) or main.main_export  # the package before the rename has main_export
export(ExportSettings(model=sys.argv[2], output=sys.argv[3], prefill_seq_len=int(sys.argv[4]),
                      ctx_len=int(sys.argv[5]), num_cores=4, compile="never", verify=False))
"""


def graph_paths(export_dir):
    """prefill/decode ONNX files of an export (graphs at the root now; in per-graph directories before)."""
    flat = {g: os.path.join(export_dir, f"{g}.onnx") for g in ("prefill", "decode")}
    if all(os.path.exists(p) for p in flat.values()):
        return flat
    return {g: os.path.join(export_dir, g, "model.onnx") for g in ("prefill", "decode")}


def node_counts(path):
    import onnx

    model = onnx.load(path, load_external_data=False)
    inner = sum(len(f.node) for f in model.functions if f.domain == "optimum_qaic_moe.layers")
    return len(model.graph.node), inner


class Raw:
    """The graph contract driven directly: chunked prefill (last chunk padded with position -1), then decode."""

    def __init__(self, paths, ctx, window):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every rounding Cast
        self.sessions = {g: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for g, p in paths.items()}
        bind = {"batch_size": 1, "ctx_len": ctx, "sliding_window": min(window or ctx, ctx)}
        self.shapes = {
            i.name: [bind.get(d, d) for d in i.shape]
            for i in self.sessions["prefill"].get_inputs()
            if i.name.startswith("past_")
        }
        self.width = self.sessions["prefill"].get_inputs()[0].shape[1]

    def _run(self, graph, ids, pos):
        s = self.sessions[graph]
        out = dict(
            zip([o.name for o in s.get_outputs()], s.run(None, {"input_ids": ids, "position_ids": pos, **self.cache}))
        )
        self.cache = {n: out[n + "_RetainedState"] for n in self.cache}
        return out["logits"][:, -1]

    def generate(self, prompt, steps, tokens=None):
        self.cache = {n: np.zeros(s, np.float32) for n, s in self.shapes.items()}
        n, w = prompt.shape[1], self.width
        for start in range(0, n, w):
            ids = np.zeros((1, w), np.int64)
            pos = np.full((1, w), -1, np.int64)
            chunk = prompt[:, start : start + w]
            ids[:, : chunk.shape[1]], pos[:, : chunk.shape[1]] = chunk, np.arange(start, start + chunk.shape[1])
            logits = self._run("prefill", ids, pos)
        out, fed = [logits], []
        for step in range(steps):
            token = out[-1].argmax(-1) if tokens is None else tokens[step]
            fed.append(token)
            out.append(self._run("decode", token[:, None].astype(np.int64), np.array([[n + step]])))
        return out, fed


def measure(export_dir, model_dir, prompt, steps, ctx):
    import torch
    from transformers import AutoModelForCausalLM

    from optimum_qaic_moe.exporters.fp16 import emulate_fp16

    paths = graph_paths(export_dir)
    meta = json.load(open(os.path.join(export_dir, "qaic_config.json")))
    window = meta.get("sliding_window") or (
        json.load(open(os.path.join(model_dir, "config.json"))).get("sliding_window")
        if meta["model_type"] == "gpt_oss"
        else None
    )
    fp32, tokens = Raw(paths, ctx, window).generate(prompt, steps)
    paths16 = {g: p[: -len(".onnx")] + ".fp16.onnx" for g, p in paths.items()}
    for g in paths:
        emulate_fp16(paths[g], paths16[g])
    fp16, _ = Raw(paths16, ctx, window).generate(prompt, steps, tokens)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    full = np.concatenate([prompt] + [t[:, None] for t in tokens], axis=1)
    with torch.no_grad():
        ref = hf(torch.from_numpy(full)).logits[0, prompt.shape[1] - 1 :].numpy()

    def rel(a, b):
        return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))

    finite = all(np.isfinite(x).all() for x in fp16)
    return {
        "finite": finite,
        "fp16_vs_fp32": max(rel(a, b) for a, b in zip(fp16, fp32)) if finite else float("nan"),
        "agree": sum(int(a.argmax() == b.argmax()) for a, b in zip(fp16, fp32)),
        "steps": len(fp32),
        "fp32_vs_transformers": max(rel(fp32[s][0], ref[s]) for s in range(len(fp32))),
        "nodes": {g: node_counts(p) for g, p in paths.items()},
    }


def export(package_dir, model_dir, out, prefill, ctx):
    subprocess.run(
        [sys.executable, "-c", EXPORT, package_dir, model_dir, out, str(prefill), str(ctx)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ctx", type=int, default=8192)
    p.add_argument("--prompt", type=int, default=8100)
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--old-package", default=None, help="a checkout of an earlier optimum-qaic-moe to compare with")
    a = p.parse_args()

    from optimum_qaic_moe.testing import tiny_configs, write_tiny_checkpoint

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    packages = [("after", here)] + ([("before", os.path.abspath(a.old_package))] if a.old_package else [])
    print(f"prompt {a.prompt} tokens in chunks of {a.prefill}, then {a.steps} greedy decode steps; ctx {a.ctx}")
    print(
        "| model | graphs | fp16 finite | max |fp16 - fp32| / scale | greedy agree | fp32 vs transformers "
        "| nodes prefill (top + in functions) | nodes decode |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="qaic-fp16-") as root:
        for arch in ("qwen3_moe", "gpt_oss"):
            if arch not in tiny_configs():
                continue
            model_dir = write_tiny_checkpoint(arch, os.path.join(root, arch))
            prompt = np.random.default_rng(0).integers(4, 90, (1, a.prompt)).astype(np.int64)
            for label, package in packages:
                out = os.path.join(root, f"{arch}-{label}")
                export(package, model_dir, out, a.prefill, a.ctx)
                r = measure(out, model_dir, prompt, a.steps, a.ctx)
                nodes = {g: f"{t} + {i}" if i else str(t) for g, (t, i) in r["nodes"].items()}
                print(
                    f"| {arch} | {label} | {'yes' if r['finite'] else 'NO'} | {r['fp16_vs_fp32']:.2e} | "
                    f"{r['agree']}/{r['steps']} | {r['fp32_vs_transformers']:.1e} | {nodes['prefill']} | "
                    f"{nodes['decode']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
