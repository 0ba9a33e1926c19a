"""Built-in verification: run the exported graphs in onnxruntime, as exported (fp32) and as the card runs them
(fp16, see ``fp16.py``), and compare with transformers.

A random prompt of 1.5 prefill chunks (so the prefill graph runs twice, the second time padded) followed by a few
greedy decode steps. The fp32 run chooses the tokens; the fp16 run and transformers are fed the same tokens
(transformers in one forward over the whole sequence, its weights streamed layer by layer). fp32 must match
transformers to round-off (an error otherwise); fp16 must stay finite (an error otherwise), and its distance from
fp32 and its greedy agreement are reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..logging import info, progress
from ..settings import ExportSettings, UserError

RELATIVE_TOLERANCE = 1e-4  # of the logits' scale; fp32 round-off through a full model is ~1e-6


@dataclass
class Run:
    logits: list[np.ndarray]  # [B, V] after the prompt and after each decode step
    tokens: list[np.ndarray]  # [B] fed at each decode step


def prompt_for(settings: ExportSettings, vocab_size: int, decode_steps: int = 3, seed: int = 0) -> np.ndarray:
    steps = decode_steps if "decode" in settings.graphs else 0
    ctx = min(settings.ctx_lens)
    n = max(1, min(settings.prefill_seq_len + settings.prefill_seq_len // 2 + 1, ctx - steps))
    return np.random.default_rng(seed).integers(0, vocab_size, size=(settings.batch_size, n)).astype(np.int64)


def run_graphs(runner, prompt: np.ndarray, steps: int, tokens: list[np.ndarray] | None = None, desc: str = "") -> Run:
    """Prefill then ``steps`` decode steps: greedy, or feeding ``tokens`` when given.

    The logits are copied: an array onnxruntime returns (and any view of it) keeps the memory arena of the session
    that made it alive, which would keep the prefill graph's activations (GiBs at real layer shapes) in memory
    through the rest of the verification."""
    with progress(total=1 + steps, desc=desc or "run", unit="call") as bar:
        logits = [np.array(runner.prefill(prompt), copy=True)]
        bar.update(1)
        fed, position = [], prompt.shape[1]
        for step in range(steps):
            token = logits[-1].argmax(-1) if tokens is None else tokens[step]
            fed.append(token)
            logits.append(np.array(runner.decode(token, np.full(len(token), position)), copy=True))
            position += 1
            bar.update(1)
    return Run(logits, fed)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


def verify_export(export_dir: str, model, source, settings: ExportSettings) -> dict:
    from ..plugins import get_architectures
    from ..runtime.runner import CausalLMRunner
    from .fp16 import emulate_fp16
    from .main import graph_file
    from .reference import reference_logits

    prompt = prompt_for(settings, model.config.vocab_size)
    steps = 3 if "decode" in settings.graphs and prompt.shape[1] + 3 <= min(settings.ctx_lens) else 0
    ctx = min(settings.ctx_lens)
    fp32 = run_graphs(CausalLMRunner(export_dir, low_memory=True, ctx_len=ctx), prompt, steps, desc="verify fp32")

    fp16_files = {g: graph_file(export_dir, g + ".fp16") for g in settings.graphs}
    try:
        for graph, path in fp16_files.items():
            emulate_fp16(graph_file(export_dir, graph), path)
        fp16 = run_graphs(
            CausalLMRunner(export_dir, low_memory=True, ctx_len=ctx, graph_files=fp16_files),
            prompt,
            steps,
            fp32.tokens,
            desc="verify fp16",
        )
    finally:
        for path in fp16_files.values():
            if os.path.exists(path):
                os.remove(path)

    full = np.concatenate([prompt] + [t[:, None] for t in fp32.tokens], axis=1) if fp32.tokens else prompt
    arch = get_architectures()[model.config.model_type]
    # the logits after the prompt and after each decode step: the last steps + 1 positions; the weights in
    # memory-mapped scratch files next to the export (file-backed pages, see reference.py)
    ref = reference_logits(model, arch, source.read, full, last=steps + 1, scratch_dir=export_dir)
    n = prompt.shape[1]
    ref_steps = [ref[:, s] for s in range(steps + 1)]
    worst = max(relative(g, r) for g, r in zip(fp32.logits, ref_steps))
    finite = all(np.isfinite(x).all() for x in fp16.logits)
    worst16 = max(relative(a, b) for a, b in zip(fp16.logits, fp32.logits)) if finite else float("inf")
    agree = [bool((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(fp16.logits, fp32.logits)]
    info(
        f"verify: prompt of {n} tokens + {steps} decode steps, max |logits - transformers| = {worst:.2e} of "
        f"the logits' scale"
    )
    info(
        f"verify fp16 (as -convert-to-fp16 runs it): {'finite' if finite else 'NOT FINITE'}, max |fp16 - "
        f"fp32| = {worst16:.2e} of the logits' scale, greedy tokens agree at {sum(agree)}/{len(agree)} steps"
    )
    if not worst <= RELATIVE_TOLERANCE:
        raise UserError(
            f"verification failed: onnxruntime logits differ from transformers by {worst:.2e} "
            f"(tolerance {RELATIVE_TOLERANCE:.0e}); the export is not exact. Re-run with --no-verify "
            "to keep the artifacts anyway, and please report this"
        )
    if not finite:
        raise UserError(
            "verification failed: the graphs give non-finite logits when run in fp16 as the card runs "
            "them; re-run with --no-verify to keep the artifacts anyway, and please report this"
        )
    return {"fp32": worst, "fp16": worst16, "agree": agree}
