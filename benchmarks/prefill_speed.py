"""Prefill and decode latency in onnxruntime (CPU): blocked, loop and grouped MoE prefill, measured side by side.

    python benchmarks/prefill_speed.py [--layers 1] [--hidden 768] [--experts 64] [--seq 128] [--chunk 64]
                                       [--tiles auto,16] [--repeats 7]

Exports one random Qwen3-MoE checkpoint once per prefill dispatch through the real CLI (blocked and grouped
with their chunk / tile sizes, and the loop), then runs the prefill graphs in turn, round after round, and
reports medians. CPU timings say nothing about the device; they tell a user what the built-in verification and
QAICModelForCausalLM cost on a laptop.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

VOCAB = 8000  # the embedding and lm_head only cost memory here; the MoE layers are what is compared


def export(cli, model_dir, out, a, *graph_args):
    subprocess.run(
        [
            cli,
            "export",
            "qaic",
            "--model",
            model_dir,
            "--prefill-seq-len",
            str(a.seq),
            "--ctx-len",
            str(a.ctx),
            "--num-cores",
            str(a.cores),
            *graph_args,
            "--no-verify",
            "--compile",
            "never",
            out,
        ],
        check=True,
        capture_output=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--cores", type=int, default=16)
    p.add_argument("--chunk", type=int, default=64, help="blocked: rows per packed chunk")
    p.add_argument("--tiles", default="auto,16", help="grouped: tile sizes to export, comma-separated")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()

    from checkpoints import mid_size_shape, write_qwen3_moe_checkpoint

    from optimum_qaic_moe.moe.cost import choose_chunk_size
    from optimum_qaic_moe.moe.dispatch import expert_work
    from optimum_qaic_moe.runtime.runner import CausalLMRunner

    root = tempfile.mkdtemp(prefix="qaic-speed-")
    model_dir = os.path.join(root, "model")
    write_qwen3_moe_checkpoint(model_dir, **dict(mid_size_shape(a.layers, a.hidden, a.experts), vocab_size=VOCAB))
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    k = 8  # mid_size_shape: top-8
    graphs = [("blocked", a.chunk), ("loop", a.chunk)] + [("grouped", t) for t in a.tiles.split(",")]
    runners, rows = {}, {}
    for dispatch, chunk in graphs:  # prefill graphs only: one copy of the weights each in memory
        name = f"{dispatch} C={chunk}" if dispatch != "loop" else "loop"
        out = os.path.join(root, name.replace(" ", "-"))
        export(
            cli,
            model_dir,
            out,
            a,
            "--prefill-only",
            "--moe-prefill-dispatch",
            dispatch,
            "--moe-prefill-packed-chunk-size",
            str(chunk),
        )
        runners[name] = CausalLMRunner(out)
        C = choose_chunk_size(dispatch, a.seq, k, a.experts, a.cores) if chunk == "auto" else int(chunk)
        rows[name] = (C, expert_work(dispatch, a.seq, k, a.experts, a.cores, C)[0])

    ids = np.random.default_rng(0).integers(0, VOCAB, (1, a.seq))
    times = {name: [] for name in runners}
    logits = {}
    for _ in range(a.repeats):  # round after round, so every graph sees the same machine state
        for name, runner in runners.items():
            t0 = time.perf_counter()
            logits[name] = runner.prefill(ids)
            times[name].append(time.perf_counter() - t0)
    decode = []
    export(cli, model_dir, os.path.join(root, "decode"), a, "--decode-only")
    runner = CausalLMRunner(os.path.join(root, "decode"))
    runner.reset()
    for step in range(a.repeats):
        t0 = time.perf_counter()
        runner.decode(np.array([1]), np.array([a.seq + step]))
        decode.append(time.perf_counter() - t0)

    print(
        f"Qwen3-MoE, {a.layers} layer(s), hidden {a.hidden}, {a.experts} experts top-{k}; prefill {a.seq} tokens, "
        f"{a.cores} cores; median of {a.repeats}, onnxruntime CPU, {os.cpu_count()} cores"
    )
    base = statistics.median(times["blocked C=" + str(a.chunk)])
    reference = logits["blocked C=" + str(a.chunk)]
    print("| graph | C | expert rows / ideal | median ms | / blocked | max abs logits diff vs blocked |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in runners:
        C, executed = rows[name]
        median = statistics.median(times[name])
        shown_c = "-" if name == "loop" else C
        print(
            f"| prefill, {name.split(' ')[0]} MoE | {shown_c} | {executed / (a.seq * k):.2f} | {1000 * median:.0f} "
            f"| {median / base:.2f} | {np.abs(logits[name] - reference).max():.1e} |"
        )
    print(f"| decode (gathered MoE), one token | - | 1.00 | {1000 * statistics.median(decode):.1f} | | |")


if __name__ == "__main__":
    main()
