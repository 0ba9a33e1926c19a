"""Export at scale: wall time, memory and disk of `optimum-cli export qaic`, side by side with QEfficient PR #935.

    python benchmarks/export_scale.py [--layers 2] [--runs ours,ours-verify,qeff] [--qeff-python PY] [--qeff-src DIR]
    python benchmarks/export_scale.py --growth [--growth-layers 2,6] [--runs ours,ours-verify]
    python benchmarks/export_scale.py --scale 4 ...        # every width / 4, every weight byte / 16: a quick run

The checkpoint is random, with Qwen/Qwen3-30B-A3B's layer shapes (hidden 2048, 128 experts top-8,
moe_intermediate 768, 32 heads, 4 KV heads, head_dim 128, vocab 151936) and ``--layers`` layers, in the Hub's
on-disk format (bf16, shards of 1 GiB, per-expert names; ``checkpoints.write_hub_qwen3_moe``), written by a child
process. ``--scale K`` divides hidden, moe_intermediate, head_dim and vocab by K (expert, head and layer counts
stay): every tensor shrinks by K^2 and the proportions between embedding, attention and experts stay those of
the real model. Then each export runs in its own process, one after the other, in this order:

  ours           optimum-cli export qaic, both graphs, --no-verify
  ours-verify    the same with the built-in verification (onnxruntime fp32 and fp16 against transformers)
  ours-prefill   the prefill graph only, --no-verify (what QEfficient's prefill-only export builds)
  qeff           QEfficient PR #935: QEFFAutoModelForCausalLM.from_pretrained(dir).export(out, prefill_only=True,
                 prefill_seq_len=512, enable_chunking=True, num_cores=16, moe_prefill_packed_chunk_size=256),
                 with torch.onnx.export forced to dynamo=False (on torch 2.13 its export needs the TorchScript
                 exporter), in its own venv

Our exports use prefill 512, ctx 4096, 16 cores, chunk 256, --compile never (``--prefill-seq-len`` and friends
change both tools' settings). For each run: wall time; peak RSS, peak anonymous memory (RssAnon) and peak
file-backed memory (RssFile: mapped checkpoint and weight-file pages, which the kernel can drop under
pressure), each the peak of the sum over the child's whole process tree, sampled from /proc/<pid>/status
``--samples-per-second`` times a second; the kernel's own peak RSS of the largest single process (ru_maxrss,
exact, a check on the sampling); and the export directory's size on disk (allocated blocks, a file with several
hard links counted once) against the fp32 weight bytes. Before each run the page cache is synced (``os.sync``),
so no run pays for the writeback of the checkpoint or of an earlier run. ``--repeat N`` runs every export N
times, interleaved, and prints medians. ``--stages`` adds, for our exports, the peak memory and the time of each
stage the CLI prints (``[qaic] <stage> ...``).

``--growth`` runs everything at 2 and 6 layers (``--growth-layers``) and prints, per added layer, the growth of
time, memory and disk (and as a fraction of the fp32 bytes a layer brings), then a table "on paper" for
Qwen3-30B-A3B, Qwen3-235B-A22B, gpt-oss-20b and gpt-oss-120b, computed as

    figure(model) = figure(measured, fewest layers) + slope * (fp32 bytes(model) - fp32 bytes(measured))

with ``slope = (figure at most layers - figure at fewest) / (their fp32 bytes difference)``: every figure is
taken as a constant plus a cost per fp32 weight byte, measured on the Qwen3-30B-A3B shape. Terms that scale with
one layer's size rather than with the total (a layer's working set) are held at the measured shape's, so for
models with larger layers (Qwen3-235B-A22B: 4x, gpt-oss-120b: 1.4x) the memory figures are low by that much
times the per-layer term. gpt-oss's MXFP4 experts are dequantized on read: time per byte may differ.

Memory: the full-size 2-layer run needs ~3.5 GiB (checkpoint) + ~7 GiB (each export, removed after it is
measured) of disk, and RAM for the largest of the three exports (QEfficient's: ~3.2x the 6.96 GiB of fp32
weights). At 6 layers of full size QEfficient would need ~50 GiB: leave qeff out of ``--runs`` there.

Setting up QEfficient PR #935 (once, outside this repository; its code is never part of it). The fork is
vbaddi/efficient-transformers at commit d9fb1f9; with a clone of it in ./efficient-transformers:

    git -C efficient-transformers archive d9fb1f9 | (mkdir -p qeff-pr935 && tar -x -C qeff-pr935)
    python3 -m venv venv-qeff && . venv-qeff/bin/activate && pip install --upgrade pip
    pip install torch==2.13.0                                 # the CPU build, first
    python - <<'EOF' > /tmp/qeff-reqs.txt                     # its pinned dependencies, less torch/torchvision
    import tomllib; deps = tomllib.load(open("qeff-pr935/pyproject.toml", "rb"))["project"]["dependencies"]
    print("\\n".join(d for d in deps if not d.startswith(("torch==", "torch@", "torchvision", "compressed-tensors"))))
    EOF
    pip install -r /tmp/qeff-reqs.txt pydantic loguru torch==2.13.0   # torch pinned: never a CUDA build
    pip install --no-deps compressed-tensors==0.15.0          # it pins torch<2.11; its code imports fine on 2.13
    pip install --no-deps -e qeff-pr935

then pass ``--qeff-python venv-qeff/bin/python --qeff-src qeff-pr935``.
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from checkpoints import QWEN3_30B_A3B  # noqa: E402 (a sibling script, importable once HERE is on the path)

GIB = 2**30
KINDS = {
    "ours": "ours, both graphs, no verification",
    "ours-verify": "ours, both graphs, with verification",
    "ours-prefill": "ours, prefill graph only, no verification",
    "qeff": "QEfficient PR #935, prefill only",
}

# The QEfficient child: force the TorchScript exporter, then the PR's prefill-only blocked export.
QEFF_CHILD = """
import sys
import torch

_export = torch.onnx.export
def export(*args, **kwargs):
    kwargs["dynamo"] = False  # torch 2.13 defaults to the torch.export-based exporter, which QEfficient does not use
    return _export(*args, **kwargs)
torch.onnx.export = export

from QEfficient import QEFFAutoModelForCausalLM

model_dir, out, seq_len, cores, chunk = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
print("onnx:", QEFFAutoModelForCausalLM.from_pretrained(model_dir).export(
    out, prefill_only=True, prefill_seq_len=seq_len, enable_chunking=True, num_cores=cores,
    moe_prefill_packed_chunk_size=chunk))
"""

# openai/gpt-oss-*'s shapes, without layer and expert counts.
GPT_OSS = {
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_experts_per_tok": 4,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 201088,
    "tie_word_embeddings": False,
}
# The models of the table "on paper": Hub config fields (transformers builds them on the meta device to count).
PAPER_MODELS = {
    "Qwen3-30B-A3B": ("qwen3_moe", dict(QWEN3_30B_A3B, num_hidden_layers=48)),
    "Qwen3-235B-A22B": (
        "qwen3_moe",
        dict(
            QWEN3_30B_A3B,
            num_hidden_layers=94,
            hidden_size=4096,
            moe_intermediate_size=1536,
            intermediate_size=12288,
            num_attention_heads=64,
            num_key_value_heads=4,
        ),
    ),
    "gpt-oss-20b": ("gpt_oss", {**GPT_OSS, "num_hidden_layers": 24, "num_local_experts": 32}),
    "gpt-oss-120b": ("gpt_oss", {**GPT_OSS, "num_hidden_layers": 36, "num_local_experts": 128}),
}


# -- measuring a process tree ----------------------------------------------------------------------------------


def process_tree(root: int) -> list:
    """root and every process descending from it (from /proc/*/stat's parent pids)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def tree_memory(root: int) -> dict:
    """{VmRSS, RssAnon, RssFile: bytes} summed over the process tree of root."""
    total = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in total:
                        total[key] += int(value.split()[0]) * 1024
        except OSError:
            continue
    return total


class Sampler:
    """Samples the memory of a process tree in a thread; keeps the peaks overall and per stage of the run."""

    def __init__(self, pid: int, interval: float):
        self.pid, self.interval = pid, interval
        self.stage, self.stage_started = "start", time.perf_counter()
        self.peaks, self.stages = {}, {}  # stages: name -> {"peaks": {...}, "seconds": s}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def enter(self, stage: str) -> None:
        self._close_stage()
        self.stage, self.stage_started = stage, time.perf_counter()

    def _close_stage(self) -> None:
        entry = self.stages.setdefault(self.stage, {"peaks": {}, "seconds": 0.0})
        entry["seconds"] += time.perf_counter() - self.stage_started

    def _run(self) -> None:
        while not self.stop.is_set():
            sample = tree_memory(self.pid)
            stage = self.stages.setdefault(self.stage, {"peaks": {}, "seconds": 0.0})["peaks"]
            for key, value in sample.items():
                self.peaks[key] = max(self.peaks.get(key, 0), value)
                stage[key] = max(stage.get(key, 0), value)
            self.stop.wait(self.interval)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self._close_stage()


def stage_of(line: str):
    """The stage a line of our CLI's log starts: ``[qaic] <stage> ...`` starts <stage>, ``[qaic] <stage>: done in
    N s`` starts "after <stage>" (what runs between two stages); else None."""
    if not line.startswith("[qaic] ") or line.startswith("[qaic]  "):
        return None
    text = line[len("[qaic] ") :].rstrip()
    if text.endswith(" ..."):
        return text[: -len(" ...")]
    if ": done in " in text:
        return "after: " + text.rsplit(": done in ", 1)[0]
    return None


def disk_bytes(path: str) -> int:
    """Allocated bytes under path, each inode once (hard links, and files shared between graphs)."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def export_dirs(out: str) -> list:
    """What an export to ``out`` wrote: out itself, and QEfficient's ``out-<hash>`` next to it."""
    return [d for d in [out] + sorted(glob.glob(glob.escape(out) + "-*")) if os.path.isdir(d)]


def run_measured(cmd: list, log_path: str, interval: float, env: dict) -> dict:
    """Run cmd; its output goes to log_path. Returns wall time, peaks and per-stage figures."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
        sampler = Sampler(proc.pid, interval)
        for line in proc.stderr:
            log.write(line)
            log.flush()
            stage = stage_of(line)
            if stage:
                sampler.enter(stage)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = status
    wall = time.perf_counter() - t0
    sampler.finish()
    if status != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-15:])
        raise SystemExit(f"error: {cmd[0]} ... failed (status {status}); the end of {log_path}:\n{tail}")
    peaks = sampler.peaks
    return {
        "seconds": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": peaks.get("VmRSS", 0),
        "anon": peaks.get("RssAnon", 0),
        "file": peaks.get("RssFile", 0),
        "maxrss": usage.ru_maxrss * 1024,
        "stages": sampler.stages,
    }


# -- the runs --------------------------------------------------------------------------------------------------


def model_shape(scale: int) -> dict:
    shape = dict(QWEN3_30B_A3B)
    for key in ("hidden_size", "moe_intermediate_size", "intermediate_size", "head_dim", "vocab_size"):
        shape[key] //= scale
    return shape


def write_checkpoint(path: str, layers: int, shape: dict, scale: int, python: str) -> int:
    """Write the random checkpoint in a child (its memory is not the exports'), in shards of 1 GiB / scale^2 (as
    many shards as the real shapes have); returns the fp32 weight bytes."""
    code = (
        f"import sys; sys.path.insert(0, {HERE!r}); import checkpoints; "
        f"print(checkpoints.write_hub_qwen3_moe({path!r}, {layers}, {(1 << 30) // scale**2}, **{shape!r}))"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def export_command(kind: str, model_dir: str, out: str, args) -> list:
    if kind == "qeff":
        return [
            args.qeff_python,
            "-c",
            QEFF_CHILD,
            model_dir,
            out,
            str(args.prefill_seq_len),
            str(args.num_cores),
            str(args.chunk),
        ]
    cli = os.path.join(os.path.dirname(args.python), "optimum-cli")
    cmd = [
        cli,
        "export",
        "qaic",
        "--model",
        model_dir,
        "--prefill-seq-len",
        str(args.prefill_seq_len),
        "--ctx-len",
        str(args.ctx_len),
        "--num-cores",
        str(args.num_cores),
        "--moe-prefill-packed-chunk-size",
        str(args.chunk),
        "--compile",
        "never",
        out,
    ]
    if kind != "ours-verify":
        cmd.append("--no-verify")
    if kind == "ours-prefill":
        cmd.append("--prefill-only")
    return cmd


def child_env(kind: str, args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if kind == "qeff":
        env["PYTHONPATH"] = args.qeff_src  # the checkout, also when not installed editable
    return env


def measure_layers(layers: int, args, root: str) -> dict:
    """Build the checkpoint of ``layers`` layers and run every export of --runs --repeat times, interleaved."""
    model_dir = os.path.join(root, f"model-{layers}")
    t0 = time.perf_counter()
    weights = write_checkpoint(model_dir, layers, model_shape(args.scale), args.scale, args.python)
    print(
        f"checkpoint: {layers} layers, fp32 weights {weights / GIB:.2f} GiB, bf16 on disk "
        f"{disk_bytes(model_dir) / GIB:.2f} GiB (written in {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    results = {kind: [] for kind in args.runs}
    for rep in range(args.repeat):
        for kind in args.runs:
            out = os.path.join(root, f"export-{kind}-{layers}")
            log = os.path.join(root, f"{kind}-{layers}-{rep}.log")
            # Every run starts with nothing dirty in the page cache: otherwise the first run's writes share the disk
            # with the writeback of the checkpoint just written, and each later run's with whatever its predecessor
            # left (every export here writes ~7 GiB, and writing them is bound by the disk).
            os.sync()
            result = run_measured(
                export_command(kind, model_dir, out, args), log, 1 / args.samples_per_second, child_env(kind, args)
            )
            dirs = export_dirs(out)
            result["disk"] = sum(disk_bytes(d) for d in dirs)
            result["load"] = os.getloadavg()[0]
            results[kind].append(result)
            print(
                f"  {kind} ({layers} layers, run {rep + 1}/{args.repeat}): {result['seconds']:.0f} s, load average "
                f"{result['load']:.1f} on {os.cpu_count()} CPUs at the end; log in {log}",
                flush=True,
            )
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(model_dir, ignore_errors=True)
    return {"layers": layers, "weights": weights, "results": {k: summarize(v) for k, v in results.items()}}


def summarize(runs: list) -> dict:
    """Medians over the repeats (per-stage figures of the first run)."""
    out = {
        key: statistics.median(r[key] for r in runs)
        for key in ("seconds", "cpu", "rss", "anon", "file", "maxrss", "disk", "load")
    }
    out["stages"] = runs[0]["stages"]
    return out


# -- printing --------------------------------------------------------------------------------------------------


def print_table(m: dict, args) -> None:
    w = m["weights"]
    print(
        f"\n{m['layers']} layers, fp32 weights {w / GIB:.2f} GiB; prefill {args.prefill_seq_len}, ctx {args.ctx_len}, "
        f"{args.num_cores} cores, chunk {args.chunk}; median of {args.repeat}\n"
    )
    print(
        "| export | wall s | CPU s | peak RSS GiB (x weights) | peak anonymous GiB (x) | peak file-backed GiB | "
        "largest process RSS GiB | on disk GiB (x) | load average |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, r in m["results"].items():
        print(
            f"| {KINDS[kind]} | {r['seconds']:.0f} | {r['cpu']:.0f} | {r['rss'] / GIB:.2f} ({r['rss'] / w:.2f}) | "
            f"{r['anon'] / GIB:.2f} ({r['anon'] / w:.2f}) | {r['file'] / GIB:.2f} | {r['maxrss'] / GIB:.2f} | "
            f"{r['disk'] / GIB:.2f} ({r['disk'] / w:.2f}) | {r['load']:.1f} |"
        )
    res = m["results"]
    if "ours" in res and "qeff" in res:
        print(
            f"\nwall time, ours (both graphs, no verification) / QEfficient (prefill only): "
            f"{res['ours']['seconds'] / res['qeff']['seconds']:.2f} (target <= 0.5)"
        )
    if "ours-prefill" in res and "qeff" in res:
        print(
            f"wall time, ours (prefill only) / QEfficient (prefill only): "
            f"{res['ours-prefill']['seconds'] / res['qeff']['seconds']:.2f}"
        )
    if "ours-verify" in res:
        print(
            f"peak anonymous with both graphs and verification: {res['ours-verify']['anon'] / w:.2f}x the fp32 "
            f"weights (target <= 0.35)"
        )
    if "ours" in res:
        print(f"export directory: {res['ours']['disk'] / w:.2f}x the fp32 weights (target <= 1.15)")
    if args.stages:
        print_stages(m)


def print_stages(m: dict) -> None:
    for kind, r in m["results"].items():
        if kind == "qeff":
            continue
        print(f"\n{KINDS[kind]}, {m['layers']} layers, by stage (peaks while the stage ran)\n")
        print("| stage | s | RSS GiB | anonymous GiB | file-backed GiB |")
        print("|---|---:|---:|---:|---:|")
        for stage, s in r["stages"].items():
            p = s["peaks"]
            if not p:  # shorter than the sampling interval
                continue
            print(
                f"| {stage} | {s['seconds']:.1f} | {p.get('VmRSS', 0) / GIB:.2f} | {p.get('RssAnon', 0) / GIB:.2f} "
                f"| {p.get('RssFile', 0) / GIB:.2f} |"
            )


FIGURES = (
    ("seconds", "wall s"),
    ("cpu", "CPU s"),
    ("rss", "peak RSS GiB"),
    ("anon", "peak anonymous GiB"),
    ("file", "peak file-backed GiB"),
    ("disk", "on disk GiB"),
)


def slopes(low: dict, high: dict) -> dict:
    """{kind: {figure: growth per fp32 weight byte}} between two measurements."""
    dw = high["weights"] - low["weights"]
    return {
        kind: {key: (high["results"][kind][key] - r[key]) / dw for key, _ in FIGURES}
        for kind, r in low["results"].items()
        if kind in high["results"]
    }


def print_growth(low: dict, high: dict) -> None:
    layers = high["layers"] - low["layers"]
    per_layer = (high["weights"] - low["weights"]) / layers
    print(
        f"\nGrowth per added layer ({low['layers']} -> {high['layers']} layers; a layer brings "
        f"{per_layer / GIB:.3f} GiB of fp32 weights)\n"
    )
    print("| export | " + " | ".join(f"{label}" for _, label in FIGURES) + " |")
    print("|---|" + "---:|" * len(FIGURES))
    for kind, s in slopes(low, high).items():
        cells = []
        for key, _ in FIGURES:
            grow = s[key] * per_layer
            cells.append(f"{grow:+.1f}" if key in ("seconds", "cpu") else f"{grow / GIB:+.3f} ({s[key]:+.2f}x)")
        print(f"| {KINDS[kind]} | " + " | ".join(cells) + " |")
    print("\n(x: the growth as a fraction of the layer's fp32 bytes; target for peak anonymous: <= 0.35x)")


def paper_models() -> dict:
    """{name: fp32 weight bytes} of the models on paper, counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for name, (model_type, fields) in PAPER_MODELS.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields), dtype=torch.float32)
        out[name] = sum(p.numel() for p in model.parameters()) * 4
    return out


def print_paper(low: dict, high: dict, scale: int) -> None:
    models = paper_models()
    s = slopes(low, high)
    print(
        "\nOn paper: figure = measured at "
        f"{low['layers']} layers + slope per fp32 byte x (the model's fp32 bytes - the measured model's)\n"
    )
    if scale > 1:
        print(
            f"(measured at --scale {scale}: the constant terms are those of a model 1/{scale * scale} the size, so "
            "this table only shows the method; run without --scale for figures)\n"
        )
    print("| model | fp32 weights GB | export | wall min | peak RSS GB | peak anonymous GB | on disk GB |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, weights in models.items():
        for kind, slope in s.items():
            r = low["results"][kind]
            at = {key: r[key] + slope[key] * (weights - low["weights"]) for key, _ in FIGURES}
            print(
                f"| {name} | {weights / 1e9:.0f} | {KINDS[kind]} | {at['seconds'] / 60:.0f} | {at['rss'] / 1e9:.0f} | "
                f"{at['anon'] / 1e9:.1f} | {at['disk'] / 1e9:.0f} |"
            )


# -- main ------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the checkpoint (default: 2)")
    parser.add_argument(
        "--growth", action="store_true", help="run at --growth-layers and print per-layer growth and the table on paper"
    )
    parser.add_argument("--growth-layers", default="2,6", help="the two layer counts of --growth (default: 2,6)")
    parser.add_argument(
        "--runs",
        default=None,
        help=f"comma-separated exports, of {', '.join(KINDS)} (default: ours,ours-verify,qeff; "
        "with --growth: ours,ours-verify)",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=1,
        help="divide hidden, moe_intermediate, head_dim and vocab by this (default: 1, the real "
        "shapes; 4: every tensor / 16, for a quick run)",
    )
    parser.add_argument("--prefill-seq-len", type=int, default=512)
    parser.add_argument("--ctx-len", type=int, default=4096)
    parser.add_argument("--num-cores", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=256, help="--moe-prefill-packed-chunk-size (default: 256)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each export; medians are printed")
    parser.add_argument("--samples-per-second", type=float, default=5.0)
    parser.add_argument("--stages", action="store_true", help="also print our exports' peaks per stage")
    parser.add_argument(
        "--python", default=sys.executable, help="the Python of the venv with optimum-qaic-moe (default: this one)"
    )
    parser.add_argument("--qeff-python", default=None, help="the Python of QEfficient's venv (needed for the qeff run)")
    parser.add_argument("--qeff-src", default=None, help="the checkout of QEfficient PR #935 (needed for the qeff run)")
    parser.add_argument(
        "--workdir", default=None, help="where checkpoints, exports and logs go (default: a new temporary directory)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and logs")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--from-json", default=None, help="print the tables of an earlier --json file, run nothing")
    args = parser.parse_args(argv)
    runs = args.runs or ("ours,ours-verify" if args.growth else "ours,ours-verify,qeff")
    args.runs = runs.split(",")
    unknown = [k for k in args.runs if k not in KINDS]
    if unknown:
        parser.error(f"unknown --runs {unknown}: choose from {', '.join(KINDS)}")
    if "qeff" in args.runs and not (args.qeff_python and args.qeff_src):
        parser.error("the qeff run needs --qeff-python and --qeff-src (see --help), or leave qeff out of --runs")
    if "qeff" in args.runs and not os.path.isfile(args.qeff_python):
        parser.error(
            f"--qeff-python {args.qeff_python} not found: set up QEfficient's venv as the docstring "
            "(--help) says, or leave qeff out of --runs"
        )
    if "qeff" in args.runs and not os.path.isdir(os.path.join(args.qeff_src, "QEfficient")):
        parser.error(f"--qeff-src {args.qeff_src} holds no QEfficient/: check out PR #935 as --help says")
    args.layer_counts = [int(v) for v in args.growth_layers.split(",")] if args.growth else [args.layers]
    if args.growth and (len(args.layer_counts) != 2 or args.layer_counts[0] >= args.layer_counts[1]):
        parser.error("--growth-layers takes two increasing layer counts, e.g. 2,6")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        for m in saved["measured"]:
            for r in m["results"].values():
                r.setdefault("cpu", float("nan"))  # written before the CPU time was recorded
        return report(saved["measured"], argparse.Namespace(**{**saved["args"], "stages": args.stages}))
    root = args.workdir or tempfile.mkdtemp(prefix="qaic-scale-")
    os.makedirs(root, exist_ok=True)
    shape = model_shape(args.scale)
    print(
        f"Qwen3-MoE, Qwen3-30B-A3B's layer shapes{f' / {args.scale}' if args.scale > 1 else ''}: "
        + ", ".join(
            f"{k} {shape[k]}"
            for k in (
                "hidden_size",
                "num_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "vocab_size",
            )
        ),
        flush=True,
    )
    measured = [measure_layers(layers, args, root) for layers in args.layer_counts]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "measured": measured}, f, indent=2)
    report(measured, args)
    if not args.keep and not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


def report(measured: list, args) -> None:
    for m in measured:
        print_table(m, args)
    if len(measured) == 2:
        print_growth(*measured)
        print_paper(*measured, args.scale)


if __name__ == "__main__":
    main()
