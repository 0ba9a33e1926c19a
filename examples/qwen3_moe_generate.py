"""Qwen3-MoE: export to QAIC artifacts and generate, from a local checkpoint.

    python examples/qwen3_moe_generate.py [CHECKPOINT_DIR]

Without an argument a tiny random Qwen3-MoE is written first (no hub needed); point it at a real
Qwen3-30B-A3B directory to export that instead (and raise the lengths below).
"""

import sys
import tempfile

from transformers import AutoTokenizer

from optimum_qaic_moe import QAICModelForCausalLM
from optimum_qaic_moe.testing import write_tiny_checkpoint

model_dir = sys.argv[1] if len(sys.argv) > 1 else write_tiny_checkpoint("qwen3_moe", tempfile.mkdtemp())

model = QAICModelForCausalLM.from_pretrained(
    model_dir, export=True, prefill_seq_len=16, ctx_len=128, num_cores=4, moe_prefill_packed_chunk_size=8
)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
inputs = tokenizer("the cat is on the red house and", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=12, do_sample=False)[0]))
