"""Built-in verification: run the exported graphs in onnxruntime and compare with transformers.

A random prompt of 1.5 prefill chunks (so the prefill graph runs twice, the second time padded) followed by a
few greedy decode steps; the logits at every step are compared with transformers' forward over the whole
sequence. A mismatch beyond fp32 round-off is an error.
"""

from __future__ import annotations

import numpy as np

from ..settings import ExportSettings, UserError

RELATIVE_TOLERANCE = 1e-4  # of the logits' scale; fp32 round-off through a full model is ~1e-6


def reference_logits(hf_model, input_ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(torch.from_numpy(input_ids)).logits[:, -1, :].numpy()


def verify_export(export_dir: str, hf_model, settings: ExportSettings, decode_steps: int = 3, seed: int = 0,
                  say=None) -> float:
    from ..runtime.session import CausalLMRunner
    from .main import say as default_say

    say = say or default_say
    runner = CausalLMRunner(export_dir)
    rng = np.random.default_rng(seed)
    steps = decode_steps if "decode" in settings.graphs else 1
    prompt_len = max(1, min(settings.prefill_seq_len + settings.prefill_seq_len // 2 + 1, settings.ctx_len - steps))
    vocab = hf_model.config.vocab_size
    ids = rng.integers(0, vocab, size=(settings.batch_size, prompt_len)).astype(np.int64)

    worst = 0.0
    logits = runner.prefill(ids)
    for step in range(steps + 1):
        ref = reference_logits(hf_model, ids)
        err = float(np.abs(logits - ref).max() / max(1.0, float(np.abs(ref).max())))
        worst = max(worst, err)
        if step == steps or ids.shape[1] >= settings.ctx_len:
            break
        nxt = ref.argmax(-1)
        logits = runner.decode(nxt, np.full(settings.batch_size, ids.shape[1]))
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    say(f"[qaic] verify: prompt of {prompt_len} tokens + {steps} decode steps, max |logits - transformers| "
        f"= {worst:.2e} of the logits' scale")
    if not worst <= RELATIVE_TOLERANCE:
        raise UserError(f"verification failed: onnxruntime logits differ from transformers by {worst:.2e} "
                        f"(tolerance {RELATIVE_TOLERANCE:.0e}); the export is not exact. Re-run with --no-verify "
                        "to keep the artifacts anyway, and please report this")
    return worst
