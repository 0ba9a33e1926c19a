"""Prefill and decode latency in onnxruntime (CPU), blocked vs loop MoE prefill, measured side by side.

    python benchmarks/prefill_speed.py [--layers 2] [--hidden 1024] [--experts 64] [--seq 128] [--repeats 7]

Exports one random Qwen3-MoE checkpoint twice through the real CLI (--moe-prefill-dispatch blocked and loop),
then alternates runs of the two prefill graphs and reports medians. CPU timings say nothing about the device;
they tell a user what the built-in verification and QAICModelForCausalLM cost on a laptop.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--cores", type=int, default=16)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()

    from checkpoints import mid_size_shape, write_qwen3_moe_checkpoint

    from optimum_qaic_moe.runtime.session import CausalLMRunner

    root = tempfile.mkdtemp(prefix="qaic-speed-")
    model_dir = os.path.join(root, "model")
    write_qwen3_moe_checkpoint(model_dir, **mid_size_shape(a.layers, a.hidden, a.experts))
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    runners = {}
    for dispatch in ("blocked", "loop"):
        out = os.path.join(root, dispatch)
        subprocess.run([cli, "export", "qaic", "--model", model_dir, "--prefill-seq-len", str(a.seq), "--ctx-len",
                        str(a.ctx), "--num-cores", str(a.cores), "--moe-prefill-packed-chunk-size", str(a.chunk),
                        "--moe-prefill-dispatch", dispatch, "--no-verify", "--compile", "never", out],
                       check=True, capture_output=True)
        runners[dispatch] = CausalLMRunner(out)

    ids = np.random.default_rng(0).integers(0, 32000, (1, a.seq))
    times = {d: [] for d in runners}
    logits = {}
    for _ in range(a.repeats):  # alternate, so both see the same machine state
        for d, runner in runners.items():
            t0 = time.perf_counter()
            logits[d] = runner.prefill(ids)
            times[d].append(time.perf_counter() - t0)
    decode = []
    runner = runners["blocked"]
    for step in range(a.repeats):
        t0 = time.perf_counter()
        runner.decode(np.array([1]), np.array([a.seq + step]))
        decode.append(time.perf_counter() - t0)

    print(f"Qwen3-MoE {a.layers} layers, hidden {a.hidden}, {a.experts} experts top-8; prefill {a.seq} tokens, "
          f"{a.cores} cores, chunk {a.chunk}; median of {a.repeats}, onnxruntime CPU, {os.cpu_count()} cores")
    print("| graph | median ms |")
    print("|---|---:|")
    for d in runners:
        print(f"| prefill, {d} MoE | {1000 * statistics.median(times[d]):.0f} |")
    print(f"| decode (gathered MoE), one token | {1000 * statistics.median(decode):.1f} |")
    ratio = statistics.median(times["loop"]) / statistics.median(times["blocked"])
    print(f"loop / blocked prefill time: {ratio:.2f}; max |logits difference| blocked vs loop: "
          f"{np.abs(logits['blocked'] - logits['loop']).max():.1e}")


if __name__ == "__main__":
    main()
