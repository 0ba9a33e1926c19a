"""Executed expert FLOPs of each MoE dispatch against the ideal (selected experts only).

    python benchmarks/moe_flops.py

The static prefill graph cannot know how many tokens each expert gets, so every packed chunk of every slot
runs; the table shows what that costs for real model shapes at T=512, N=16 cores, C=256 rows per chunk.
"""

from optimum_qaic_moe.moe.dispatch import executed_expert_flops, ideal_expert_flops

SHAPES = {  # name: (E experts, k per token, H hidden, I expert intermediate)
    "Qwen3-30B-A3B": (128, 8, 2048, 768),
    "gpt-oss-20b": (32, 4, 2880, 2880),
}


def main(T: int = 512, N: int = 16, C: int = 256) -> None:
    print(f"T={T} tokens, N={N} cores, C={C} rows per packed chunk; FLOPs per MoE layer")
    print("| model | dispatch | executed GFLOP | ideal GFLOP | executed / ideal |")
    print("|---|---|---:|---:|---:|")
    for name, (E, k, H, I) in SHAPES.items():
        ideal = ideal_expert_flops(T, k, H, I)
        for dispatch in ("blocked", "loop", "gathered"):
            done = executed_expert_flops(dispatch, T, k, H, I, E, N, C)
            label = dispatch + (" (decode path, for reference)" if dispatch == "gathered" else "")
            print(f"| {name} | {label} | {done / 1e9:.1f} | {ideal / 1e9:.1f} | {done / ideal:.2f} |")


if __name__ == "__main__":
    main()
