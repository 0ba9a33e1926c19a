"""GPT-OSS: export to QAIC artifacts (sliding-window layers keep a ring cache), save, reload, and generate a
left-padded batch.

    python examples/gpt_oss_generate.py [CHECKPOINT_DIR]

Without an argument a tiny random GPT-OSS (window 8) is written first (no hub needed).
"""

import sys
import tempfile

from transformers import AutoTokenizer

from optimum_qaic_moe import QAICModelForCausalLM
from optimum_qaic_moe.testing import write_tiny_checkpoint

model_dir = sys.argv[1] if len(sys.argv) > 1 else write_tiny_checkpoint("gpt_oss", tempfile.mkdtemp())
saved = tempfile.mkdtemp()

model = QAICModelForCausalLM.from_pretrained(
    model_dir, export=True, batch_size=2, prefill_seq_len=8, ctx_len=64, num_cores=3, moe_prefill_packed_chunk_size=5
)
model.save_pretrained(saved)  # the exported graphs, qaic_config.json, tokenizer and compile.sh
model = QAICModelForCausalLM.from_pretrained(saved)

tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
inputs = tokenizer(["the sun is high and the sky is blue over the sea", "a dog"], return_tensors="pt", padding=True)
for row in model.generate(**inputs, max_new_tokens=10, do_sample=False):
    print(tokenizer.decode(row, skip_special_tokens=True))
