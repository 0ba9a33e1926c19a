"""Built-in verification: run the exported graphs in onnxruntime and compare with transformers.

A random prompt of 1.5 prefill chunks (so the prefill graph runs twice, the second time padded) followed by a
few greedy decode steps; the logits at every step are compared with transformers' forward over the whole
sequence. A mismatch beyond fp32 round-off is an error.

Memory: the transformers references are computed first (``reference_run``), so the pipeline can free the
model before onnxruntime loads the graphs, and the runner loads one graph at a time (prefill, then decode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from ..logging import info, progress
from ..settings import ExportSettings, UserError

RELATIVE_TOLERANCE = 1e-4  # of the logits' scale; fp32 round-off through a full model is ~1e-6


@dataclass
class Reference:
    prompt: np.ndarray  # [B, n]
    tokens: List[np.ndarray]  # greedy token per decode step, [B] each
    logits: List[np.ndarray]  # transformers logits after the prompt and after each step, [B, V] each


def reference_run(hf_model, settings: ExportSettings, decode_steps: int = 3, seed: int = 0) -> Reference:
    import torch

    steps = decode_steps if "decode" in settings.graphs else 1
    prompt_len = max(1, min(settings.prefill_seq_len + settings.prefill_seq_len // 2 + 1, settings.ctx_len - steps))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, hf_model.config.vocab_size, size=(settings.batch_size, prompt_len)).astype(np.int64)
    ref = Reference(prompt=ids, tokens=[], logits=[])
    for step in range(steps + 1):
        with torch.no_grad():
            logits = hf_model(torch.from_numpy(ids)).logits[:, -1, :].numpy()
        ref.logits.append(logits)
        if step == steps or ids.shape[1] >= settings.ctx_len:
            break
        nxt = logits.argmax(-1)
        ref.tokens.append(nxt)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    return ref


def verify_export(export_dir: str, ref: Reference) -> float:
    from ..runtime.session import CausalLMRunner

    runner = CausalLMRunner(export_dir, low_memory=True)
    with progress(total=1 + len(ref.tokens), desc="verify", unit="call") as bar:
        got = [runner.prefill(ref.prompt)]
        bar.update(1)
        position = ref.prompt.shape[1]
        for token in ref.tokens:
            got.append(runner.decode(token, np.full(len(token), position)))
            position += 1
            bar.update(1)
    worst = max(float(np.abs(g - r).max() / max(1.0, float(np.abs(r).max()))) for g, r in zip(got, ref.logits))
    info(f"verify: prompt of {ref.prompt.shape[1]} tokens + {len(ref.tokens)} decode steps, "
        f"max |logits - transformers| = {worst:.2e} of the logits' scale")
    if not worst <= RELATIVE_TOLERANCE:
        raise UserError(f"verification failed: onnxruntime logits differ from transformers by {worst:.2e} "
                        f"(tolerance {RELATIVE_TOLERANCE:.0e}); the export is not exact. Re-run with --no-verify "
                        "to keep the artifacts anyway, and please report this")
    return worst
