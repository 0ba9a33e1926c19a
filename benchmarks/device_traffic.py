"""Host <-> device bytes per request and per decode token of ``device="qaic"``, before and after the KV cache
stayed on the card, measured side by side in one run.

    python benchmarks/device_traffic.py [--layers 4] [--ctx 1024] [--prompt 50] [--tokens 16]

The QAIC SDK is proprietary and cannot be installed here, so this runs against the stand-in runtime of the tests
(tests/standins/: onnxruntime behind the qaicrt API, counting every byte bound to a call). Byte counts are what
the host hands the runtime, which is what crosses PCIe; time is not measured (the stand-in's says nothing).
"before" binds the whole cache in and out on every call, as the runner did until now; "after" is
``CausalLMRunner(device="qaic")``. The checkpoint is a random Qwen3-MoE with Qwen3-30B-A3B's KV geometry per
layer (4 KV heads of 128) and small everything else; the last line scales the measured per-token cost to
Qwen3-30B-A3B itself (48 layers, ctx 8192, vocab 151936) by the same formula.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def export_and_compile(root: str, layers: int, ctx: int, prefill: int) -> str:
    from checkpoints import write_qwen3_moe_checkpoint
    from standins import install_tool

    model = os.path.join(root, "model")
    write_qwen3_moe_checkpoint(
        model,
        hidden_size=256,
        num_hidden_layers=layers,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=64,
        intermediate_size=512,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    out = os.path.join(root, "export")
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    subprocess.run(
        [
            cli,
            "export",
            "qaic",
            "--model",
            model,
            "--prefill-seq-len",
            str(prefill),
            "--ctx-len",
            str(ctx),
            "--num-cores",
            "4",
            "--no-verify",
            "--compile",
            "always",
            "--compiler",
            install_tool(os.path.join(root, "bin")),
            out,
        ],
        check=True,
        capture_output=True,
        env=dict(os.environ, OPTIMUM_QAIC_MOE_CACHE=os.path.join(root, "cache")),
    )
    return out


def whole_cache_runner(export_dir: str):
    """The runner as it was: every call binds the whole cache (float16 host copy) in and reads it back."""
    from optimum_qaic_moe.runtime.runner import RETAINED, CausalLMRunner, DeviceKVCache

    class WholeCacheEachCall(DeviceKVCache):
        def start(self):
            super().start()
            self.host = {
                g: {n: np.zeros(self.spec[g][n], s.dtype[n]) for n in s.kv_input_names()}
                for g, s in self.sessions.items()
            }
            self.host_cache = None

        def run(self, graph, input_ids, position_ids, ends_prompt=False):
            session, spec = self.sessions[graph], self.spec[graph]
            cache = self.host_cache if self.host_cache is not None else self.host[graph]
            outputs = session.kv_output_names()
            session.set_buffers(cache)
            session.set_buffers({n: np.empty(spec[n], session.dtype[n]) for n in outputs})
            session.set_buffers({"logits": np.empty(spec["logits"], session.dtype["logits"])})
            out = session.run({"input_ids": input_ids, "position_ids": position_ids})
            self.host_cache = {n[: -len(RETAINED)]: out[n] for n in outputs}
            return out["logits"][:, -1, :].astype(np.float32)

    runner = CausalLMRunner(export_dir, device="qaic")
    meta = runner.meta
    runner.close()
    runner.kv = WholeCacheEachCall(export_dir, meta)
    return runner


def measure(runner, qaicrt, prompt: np.ndarray, tokens: int) -> dict:
    """Bytes of one request: its prefill, its first decode step, and the median later step."""

    def delta(before):
        return (
            qaicrt.traffic["to_device"] - before["to_device"],
            qaicrt.traffic["from_device"] - before["from_device"],
        )

    before = dict(qaicrt.traffic)
    token = runner.prefill(prompt).argmax(-1)
    result = {"prefill": delta(before), "steps": []}
    for i in range(tokens):
        before = dict(qaicrt.traffic)
        token = runner.decode(token, [prompt.shape[1] + i]).argmax(-1)
        result["steps"].append(delta(before))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--prefill", type=int, default=32)
    p.add_argument("--prompt", type=int, default=50)
    p.add_argument("--tokens", type=int, default=16)
    a = p.parse_args()

    root = tempfile.mkdtemp(prefix="qaic-traffic-")
    export_dir = export_and_compile(root, a.layers, a.ctx, a.prefill)
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "standins"))
    import qaicrt

    from optimum_qaic_moe.runtime.runner import CausalLMRunner

    prompt = np.random.default_rng(0).integers(0, 32000, size=(1, a.prompt))
    runners = {
        "before: whole cache every call": whole_cache_runner(export_dir),
        "after: cache stays on the card": CausalLMRunner(export_dir, device="qaic"),
    }
    host = CausalLMRunner(export_dir, low_memory=True)  # the cache's shapes, bound as the programs bind them
    cache = sum(int(np.prod(s)) * 2 for s in host.kv.cache_shapes.values())
    print(
        f"Qwen3-MoE, {a.layers} layers, 4 KV heads x 128, ctx {a.ctx}, vocab 32000, prompt {a.prompt} "
        f"({-(-a.prompt // a.prefill)} prefill chunks of {a.prefill}), {a.tokens} decode steps; "
        f"KV cache {cache:,} bytes (float16)"
    )
    print("| runner | prefill in / out | first decode step in / out | later decode steps in / out (median) |")
    print("|---|---:|---:|---:|")
    later = {}
    for name, runner in runners.items():
        measure(runner, qaicrt, prompt, 2)  # a first request: a program's first use also writes zeros
        r = measure(runner, qaicrt, prompt, a.tokens)
        steps = np.array(r["steps"][1:])
        later[name] = (int(np.median(steps[:, 0])), int(np.median(steps[:, 1])))
        print(
            f"| {name} | {r['prefill'][0]:,} / {r['prefill'][1]:,} | {r['steps'][0][0]:,} / "
            f"{r['steps'][0][1]:,} | {later[name][0]:,} / {later[name][1]:,} |"
        )
    before, after = later["before: whole cache every call"], later["after: cache stays on the card"]
    print(
        f"per decode token: {sum(before):,} bytes before, {sum(after):,} after ({sum(before) / sum(after):.0f}x "
        "fewer); after = token ids + positions (int64) in, logits (float32) out"
    )
    big_cache = 48 * 2 * 4 * 8192 * 128 * 2
    print(
        f"Qwen3-30B-A3B, ctx 8192, same formula: {2 * big_cache + 16 + 151936 * 4:,} bytes per decode token "
        f"before, {16 + 151936 * 4:,} after"
    )


if __name__ == "__main__":
    main()
