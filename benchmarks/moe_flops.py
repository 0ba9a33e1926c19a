"""Expert work of each MoE prefill dispatch for real model shapes, and what the cost model predicts for it.

    python benchmarks/moe_flops.py [--device ai100-pro] [--cores 16] [--mxfp6] [--no-graph-check]

Per MoE layer: executed expert FLOPs against the ideal (selected experts only), expert weight sets loaded and
their bytes, and the predicted time of optimum_qaic_moe/moe/cost.py (FLOPs at the fp16 peak + weight
bytes at the DRAM bandwidth; Cloud AI 100 figures from the Cloud AI SDK documentation; on paper, no device).

Then the counters are checked against exported graphs: a 1-layer random Qwen3-MoE with the routing of
Qwen3-30B-A3B (128 experts, top-8) but hidden 64 is exported through the CLI for each dispatch at a 512-token
prefill, and the expert MatMul FLOPs and weight elements of the ONNX file (shapes from ONNX shape inference)
must equal the counters.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from optimum_qaic_moe.moe.cost import DEVICES, FP16_BYTES, MXFP6_BYTES, SOURCE, Device, choose_chunk_size, predict
from optimum_qaic_moe.moe.dispatch import expert_work

MODELS = {  # name: (E experts, k per token, H hidden, I expert intermediate)
    "Qwen3-30B-A3B": (128, 8, 2048, 768),
    "Qwen3-235B-A22B": (128, 8, 4096, 1536),
    "gpt-oss-20b": (32, 4, 2880, 2880),
    "gpt-oss-120b": (128, 4, 2880, 2880),
}
TOKENS = (128, 512, 2048)
GROUPED_TILES = (16, 32, 64, 128, 256)
TRADE_OFF_TILES = (1, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Setup:
    cores: int
    device: Device
    weight_bytes: float

    def predict(self, dispatch, T, k, E, C, W=1):
        return predict(dispatch, T, k, E, self.cores, C, W, self.device, self.weight_bytes)

    def auto(self, dispatch, T, k, E):
        return choose_chunk_size(dispatch, T, k, E, self.cores, self.device, self.weight_bytes)


def rows_for(setup, T, k, E):
    """[(dispatch, C, label)] of the table for one model and prefill length."""
    auto = setup.auto("grouped", T, k, E)
    rows = [("blocked", 256, "blocked (default C)"), ("blocked", T, "blocked, C auto = T"), ("loop", T, "loop")]
    rows += [("grouped", C, "grouped") for C in GROUPED_TILES if C < T]
    rows.append(("grouped", auto, "**grouped, C auto**"))
    fastest = min(range(1, T + 1), key=lambda C: (setup.predict("grouped", T, k, E, C).seconds, C))
    if fastest != auto:
        rows.append(("grouped", fastest, "grouped, cost-model optimum without auto's guards"))
    rows.append(("gathered", 1, "gathered (decode path, for reference)"))
    return rows


def summary_table(setup):
    """auto against the targets: <= 2x the ideal FLOPs and no more weight loads than blocked at C=256."""
    print(
        "| model | T | blocked C=256: x ideal, loads, ms | blocked C=T: ms | **grouped, C auto**: C, x ideal, "
        "loads, ms | grouped, best C without auto's guards: C, x ideal, loads, ms |"
    )
    print("|---|---:|---|---:|---|---|")
    for name, (E, k, H, I) in MODELS.items():
        W = 3 * H * I
        for T in TOKENS:
            auto = setup.auto("grouped", T, k, E)
            best = min(range(1, T + 1), key=lambda C: (setup.predict("grouped", T, k, E, C).seconds, C))
            one_chunk = setup.predict("blocked", T, k, E, T, W).seconds * 1e3
            print(
                f"| {name} | {T} | {cell(setup, 'blocked', T, k, E, 256, W)} | {one_chunk:.1f} | "
                f"C={auto}: {cell(setup, 'grouped', T, k, E, auto, W)} | "
                f"C={best}: {cell(setup, 'grouped', T, k, E, best, W)} |"
            )
    print()


def work_table(setup):
    print(
        "| model | T | dispatch | C | executed GFLOP | x ideal | weight loads | weight GB | "
        "predicted ms (compute + DRAM) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, (E, k, H, I) in MODELS.items():
        W = 3 * H * I  # weight elements of one expert
        for T in TOKENS:
            for dispatch, C, label in rows_for(setup, T, k, E):
                p = setup.predict(dispatch, T, k, E, C, W)
                shown_c = min(C, T) if dispatch in ("blocked", "grouped") else "-"
                print(
                    f"| {name} | {T} | {label} | {shown_c} | {p.rows * 2 * W / 1e9:.1f} | {p.rows / (T * k):.2f} "
                    f"| {p.loads} | {p.loads * W * setup.weight_bytes / 1e9:.2f} | {p.seconds * 1e3:.2f} "
                    f"({p.compute_s * 1e3:.2f} + {p.dram_s * 1e3:.2f}) |"
                )


def trade_off_table(setup, T=128):
    print(
        f"\nT={T}, grouped: executed / ideal FLOPs, weight loads, predicted ms per tile size C; blocked at its "
        "default C=256 (one chunk) loads each expert once"
    )
    head = " | ".join(f"C={C}" for C in TRADE_OFF_TILES)
    print(f"| model | blocked C=256 | {head} | auto |")
    print("|---|" + "---|" * (len(TRADE_OFF_TILES) + 2))
    for name, (E, k, H, I) in MODELS.items():
        W = 3 * H * I
        cells = [cell(setup, "blocked", T, k, E, 256, W)]
        cells += [cell(setup, "grouped", T, k, E, C, W) for C in TRADE_OFF_TILES]
        auto = setup.auto("grouped", T, k, E)
        print(f"| {name} | {' | '.join(cells)} | C={auto}: {cell(setup, 'grouped', T, k, E, auto, W)} |")


def cell(setup, dispatch, T, k, E, C, W):
    p = setup.predict(dispatch, T, k, E, C, W)
    return f"{p.rows / (T * k):.2f}x, {p.loads}, {p.seconds * 1e3:.1f} ms"


def graph_check(setup, T=512):
    """Export a 1-layer Qwen3-MoE (128 experts, top-8, hidden 64) per dispatch; compare graph and counters."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from checkpoints import mid_size_shape, write_qwen3_moe_checkpoint

    from optimum_qaic_moe.moe.graph_work import graph_expert_work

    E, k, H = 128, 8, 64
    shape = dict(mid_size_shape(1, H, E), head_dim=16, num_attention_heads=4, num_key_value_heads=2)
    I = shape["moe_intermediate_size"]
    W = 3 * H * I
    N = setup.cores
    auto = setup.auto("grouped", T, k, E)
    root = tempfile.mkdtemp(prefix="qaic-flops-")
    model = os.path.join(root, "model")
    write_qwen3_moe_checkpoint(model, **shape)
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    print(
        f"\nCounters against the exported graphs: 1-layer Qwen3-MoE, E={E}, k={k}, H={H}, I={I}, prefill T={T}, "
        f"N={N} (decode graph: T=1)"
    )
    print(
        "| graph | dispatch | C | expert MatMuls | graph FLOPs | counter FLOPs | graph weight loads | counter loads "
        "| equal | export s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    cases = [
        ("prefill", "blocked", 256),
        ("prefill", "grouped", 32),
        ("prefill", "grouped", auto),
        ("prefill", "loop", 256),
        ("decode", "gathered", 1),
    ]
    for graph, dispatch, C in cases:
        out = os.path.join(root, f"{dispatch}-{C}")
        graph_args = (
            ["--decode-only"]
            if graph == "decode"
            else ["--prefill-only", "--moe-prefill-dispatch", dispatch, "--moe-prefill-packed-chunk-size", str(C)]
        )
        t0 = time.perf_counter()
        subprocess.run(
            [
                cli,
                "export",
                "qaic",
                "--model",
                model,
                "--prefill-seq-len",
                str(T),
                "--ctx-len",
                str(2 * T),
                "--num-cores",
                str(N),
                *graph_args,
                "--no-verify",
                "--compile",
                "never",
                out,
            ],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - t0
        got = graph_expert_work(os.path.join(out, graph, "model.onnx"))
        rows, loads = expert_work(dispatch, T if graph == "prefill" else 1, k, E, N, C)
        equal = got.flops == rows * 2 * W and got.weight_elements == loads * W
        shown_c = C if dispatch in ("blocked", "grouped") else "-"
        print(
            f"| {graph} | {dispatch} | {shown_c} | {got.matmuls} | {got.flops:,} | {rows * 2 * W:,} | "
            f"{got.weight_elements // W} | {loads} | {'yes' if equal else 'NO'} | {seconds:.0f} |"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=sorted(DEVICES), default="ai100-pro")
    p.add_argument("--cores", type=int, default=16)
    p.add_argument("--mxfp6", action="store_true", help="expert weights in MXFP6 (-mxfp6-matmul) instead of fp16")
    p.add_argument("--no-graph-check", action="store_true")
    a = p.parse_args()
    setup = Setup(a.cores, DEVICES[a.device], MXFP6_BYTES if a.mxfp6 else FP16_BYTES)
    d = setup.device
    print(
        f"Per MoE layer, N={a.cores} cores; cost model on {d.name}: {d.fp16_flops / 1e12:.1f} TFLOP/s fp16, "
        f"{d.dram_bytes_per_s / 1e9:.0f} GB/s DRAM ({SOURCE}); expert weights "
        f"{'MXFP6' if a.mxfp6 else 'fp16'} ({setup.weight_bytes:g} bytes each); predicted, not measured\n"
    )
    summary_table(setup)
    work_table(setup)
    trade_off_table(setup)
    if not a.no_graph_check:
        graph_check(setup)


if __name__ == "__main__":
    main()
