"""Memory and time of reading every tensor of a ~1 GiB bf16 checkpoint one expert at a time, side by side with
transformers' ``from_pretrained`` of the same checkpoint.

    python benchmarks/checkpoint_read_memory.py [--layers 2] [--experts 128] [--runs 3] [--modes experts,whole]

Writes a random Qwen3-MoE checkpoint in the Hub's format (bf16, 4 shards + index, per-expert names; no model is
built), then runs each reader in its own process:

- ``HFWeights, one expert (or as many rows) at a time``: ``HFWeights.read(name, rows=slice(e, e + 1))`` for
  every expert of a fused expert parameter (transformers 5.x), and the other tensors (per-expert weights on 4.57,
  embeddings, attention) in row slices no larger than one expert's gate_up_proj in float32; each float32 piece is
  consumed (summed) and dropped.
- ``HFWeights, whole tensors``: ``read(name)`` of every parameter, for contrast (a fused expert tensor at once).
- ``from_pretrained (float32)`` (``--modes experts,whole,from_pretrained``): ``AutoModelForCausalLM.from_pretrained(
  dir, dtype=torch.float32)``, the model held, as the exporter loads it today.

Peak RSS is the OS's ru_maxrss of the child. Peak anonymous memory (RssAnon: what the file mapping does not
account for) and file-backed resident memory (RssFile: mapped checkpoint pages, which the kernel can drop) are
sampled every 2 ms from /proc/self/status by a thread in the child; "after imports" is the child's RssAnon with
torch and transformers imported, "after setup" with the config read, the meta model built and the safetensors
headers parsed, just before the first read. Times are medians over ``--runs``.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SHAPE = {
    "hidden_size": 1024,
    "moe_intermediate_size": 512,
    "num_experts_per_tok": 8,
    "intermediate_size": 3072,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 65536,
    "norm_topk_prob": True,
    "tie_word_embeddings": False,
    "rope_theta": 1e6,
}


def hub_tensors(layers: int, experts: int) -> dict:
    """{name: shape} of a Qwen3-MoE in the Hub's per-expert layout."""
    h, i, d = SHAPE["hidden_size"], SHAPE["moe_intermediate_size"], SHAPE["head_dim"]
    q, kv = SHAPE["num_attention_heads"] * d, SHAPE["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (SHAPE["vocab_size"], h)}
    for layer in range(layers):
        p = f"model.layers.{layer}"
        shapes.update(
            {
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.post_attention_layernorm.weight": (h,),
                f"{p}.self_attn.q_proj.weight": (q, h),
                f"{p}.self_attn.k_proj.weight": (kv, h),
                f"{p}.self_attn.v_proj.weight": (kv, h),
                f"{p}.self_attn.o_proj.weight": (h, q),
                f"{p}.self_attn.q_norm.weight": (d,),
                f"{p}.self_attn.k_norm.weight": (d,),
                f"{p}.mlp.gate.weight": (experts, h),
            }
        )
        for e in range(experts):
            shapes.update(
                {
                    f"{p}.mlp.experts.{e}.gate_proj.weight": (i, h),
                    f"{p}.mlp.experts.{e}.up_proj.weight": (i, h),
                    f"{p}.mlp.experts.{e}.down_proj.weight": (h, i),
                }
            )
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (SHAPE["vocab_size"], h)})
    return shapes


def write_checkpoint(path: str, layers: int, experts: int) -> int:
    """Random bf16 tensors in 4 shards + index and a Hub-style config.json; returns the bf16 bytes."""
    import torch

    from optimum_qaic_moe.testing import write_shards

    torch.manual_seed(0)
    tensors = {n: (torch.randn(s) * 0.02).to(torch.bfloat16) for n, s in hub_tensors(layers, experts).items()}
    os.makedirs(path, exist_ok=True)
    write_shards(tensors, path, 4)
    config = dict(
        SHAPE,
        architectures=["Qwen3MoeForCausalLM"],
        model_type="qwen3_moe",
        num_hidden_layers=layers,
        num_experts=experts,
        torch_dtype="bfloat16",
        rope_scaling=None,
        mlp_only_layers=[],
        decoder_sparse_step=1,
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return sum(t.numel() * 2 for t in tensors.values())


def status() -> dict:
    """RssAnon and RssFile of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def sample_memory(peaks: dict, stop) -> None:
    while not stop.is_set():
        for key, value in status().items():
            peaks[key] = max(peaks.get(key, 0), value)
        stop.wait(0.002)


def row_chunks(weights, name: str, expert_bytes: int):
    """Row slices of ``name``: one expert each for a fused expert parameter, else at most ``expert_bytes`` of
    float32 rows (so no read is larger than one expert)."""
    shape = weights.shape(name)
    row_bytes = 4 * max(1, int(torch_numel(shape[1:])))
    fused_experts = ".mlp.experts." in name and name.endswith(("gate_up_proj", "down_proj"))
    step = 1 if fused_experts else max(1, expert_bytes // row_bytes)
    return [slice(r, r + step) for r in range(0, shape[0] if shape else 1, step)]


def torch_numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def checksum(w) -> float:
    """float64 sum of ``w``, cast 1M values at a time (a whole-tensor cast would cost 2x its memory)."""
    import torch

    return sum(float(c.sum(dtype=torch.float64)) for c in w.detach().reshape(-1).split(1 << 20))


def measure(mode: str, path: str) -> None:
    """Child process: run one reader, print its figures as JSON."""
    import resource
    import threading

    import torch
    from transformers import AutoModelForCausalLM

    from optimum_qaic_moe.checkpoint import open_checkpoint

    before = status()  # the interpreter with torch and transformers imported
    setup = before
    peaks, stop = {}, threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(peaks, stop), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    total, elements = 0.0, 0
    if mode == "from_pretrained":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        for p in model.parameters():
            total, elements = total + checksum(p), elements + p.numel()
    else:
        weights = open_checkpoint(path)
        config = weights.config
        setup = status()  # + config, meta model, file headers: what the reads start from
        expert_bytes = 4 * 3 * config.moe_intermediate_size * config.hidden_size // 2  # gate_up or down of one expert
        for name in weights.names():
            for rows in row_chunks(weights, name, expert_bytes) if mode == "experts" else [None]:
                w = weights.read(name, rows)
                total, elements = total + checksum(w), elements + w.numel()
                del w
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    print(
        json.dumps(
            dict(
                seconds=seconds,
                elements=elements,
                checksum=total,
                anon_before=before["RssAnon"],
                anon_setup=setup["RssAnon"],
                peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                **peaks,
            )
        )
    )


MODES = {
    "experts": "HFWeights, one expert (or as many rows) at a time",
    "whole": "HFWeights, whole tensors",
    "from_pretrained": "from_pretrained (float32)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--modes",
        default="experts,whole",
        help=f"comma-separated, of {', '.join(MODES)} (from_pretrained holds the float32 model: "
        "about 3 GiB of anonymous memory for the default checkpoint)",
    )
    parser.add_argument("--keep", default=None, help="Directory to keep the checkpoint in.")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(*args.measure)

    import transformers

    root = args.keep or tempfile.mkdtemp(prefix="qaic-ckpt-bench-")
    path = os.path.join(root, "model")
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"import checkpoint_read_memory as b; print(b.write_checkpoint({path!r}, {args.layers}, {args.experts}))"
    )
    size = int(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()[-1]
    )
    gib = 2**30
    print(
        f"checkpoint: Qwen3-MoE, {args.layers} layers, {args.experts} experts, hidden {SHAPE['hidden_size']}, "
        f"bf16 {size / gib:.2f} GiB (float32 {2 * size / gib:.2f} GiB), 4 shards; transformers "
        f"{transformers.__version__}; {args.runs} runs each, modes interleaved"
    )
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}: choose from {', '.join(MODES)}")
    results = {mode: [] for mode in modes}
    for _ in range(args.runs):
        for mode in modes:
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--measure", mode, path],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
    print(
        "| reader | median s | peak RSS GiB | peak anonymous GiB | anonymous after imports | after setup | "
        "peak file-backed GiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, runs in results.items():
        print(
            f"| {MODES[mode]} | {statistics.median(r['seconds'] for r in runs):.2f} | "
            f"{max(r['peak_rss'] for r in runs) / gib:.2f} | {max(r['RssAnon'] for r in runs) / gib:.2f} | "
            f"{max(r['anon_before'] for r in runs) / gib:.2f} | {max(r['anon_setup'] for r in runs) / gib:.2f} | "
            f"{max(r['RssFile'] for r in runs) / gib:.2f} |"
        )
    checksums = {mode: runs[0]["checksum"] for mode, runs in results.items()}
    print(f"checksums (float64 sum of every value read): {checksums}")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
