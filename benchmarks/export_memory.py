"""Wall time and peak memory of `optimum-cli export qaic` on a 2-layer model with Qwen3-30B-A3B layer shapes.

    python benchmarks/export_memory.py [--layers 2] [--verify] [--keep DIR]

Builds the random checkpoint locally (no hub), then runs the real CLI in a subprocess and reports its wall
time and peak RSS (the OS's ru_maxrss of the child), next to the fp32 weight bytes. Needs ~25 GB of disk.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

QWEN3_30B_A3B_LAYER = dict(hidden_size=2048, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                           intermediate_size=6144, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                           vocab_size=151936, norm_topk_prob=True, decoder_sparse_step=1,
                           max_position_embeddings=40960, tie_word_embeddings=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prefill-seq-len", type=int, default=512)
    parser.add_argument("--ctx-len", type=int, default=4096)
    parser.add_argument("--num-cores", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--keep", default=None, help="Directory to keep the checkpoint and export in.")
    parser.add_argument("--verify", action="store_true", help="Include the built-in onnxruntime verification.")
    args = parser.parse_args()

    root = args.keep or tempfile.mkdtemp(prefix="qaic-bench-")
    model_dir, out_dir = os.path.join(root, "model"), os.path.join(root, "export")
    t0 = time.perf_counter()
    # Built in a child so its memory does not count against the export's peak.
    code = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
           f"import checkpoints, export_memory as m; print(checkpoints.write_qwen3_moe_checkpoint(" \
           f"{model_dir!r}, num_hidden_layers={args.layers}, **m.QWEN3_30B_A3B_LAYER))"
    weight_bytes = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                      text=True).stdout.split()[-1])
    print(f"checkpoint: {args.layers} layers, fp32 weights {weight_bytes / 2**30:.2f} GiB "
          f"(built in {time.perf_counter() - t0:.0f} s)", flush=True)

    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    cmd = [cli, "export", "qaic", "--model", model_dir, "--prefill-seq-len", str(args.prefill_seq_len),
           "--ctx-len", str(args.ctx_len), "--num-cores", str(args.num_cores), "--moe-prefill-packed-chunk-size",
           str(args.chunk), "--compile", "never", out_dir] + ([] if args.verify else ["--no-verify"])
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"export failed with status {status}")
    peak = usage.ru_maxrss * 1024  # kB on Linux
    sizes = {g: sum(os.path.getsize(os.path.join(out_dir, g, f)) for f in os.listdir(os.path.join(out_dir, g)))
             for g in ("prefill", "decode")}
    print(f"export wall time      {wall:.0f} s")
    print(f"export peak RSS       {peak / 2**30:.2f} GiB")
    print(f"fp32 weight bytes     {weight_bytes / 2**30:.2f} GiB")
    print(f"peak RSS / weights    {peak / weight_bytes:.2f}")
    for g, size in sizes.items():
        print(f"{g} graph on disk    {size / 2**30:.2f} GiB")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
