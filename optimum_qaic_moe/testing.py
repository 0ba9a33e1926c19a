"""Tiny random checkpoints of every registered architecture (its ``tiny_config``), written offline in seconds.

Used by the tests, the examples and the README quickstart (the model hub is not needed):

    qaic-moe-tiny qwen3_moe ./tiny-qwen3-moe
    python -m optimum_qaic_moe.testing gpt_oss ./tiny-gpt-oss
"""

from __future__ import annotations

import argparse
import os

WORDS = (
    "the a an of to in is was it on for with as by at from that this be are or and not but have had has "
    "one two three four five six seven eight nine ten red green blue black white cat dog bird fish tree "
    "house car road river sea sky sun moon star rain snow wind fire stone gold iron glass paper book word "
    "song light dark cold warm fast slow big small old new good bad first last long short high low"
).split()
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>")

def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_input_names=["input_ids", "attention_mask"])


def tiny_configs() -> dict:
    """{model_type: config kwargs of a tiny model} of every registered architecture that declares one."""
    from .plugins import get_architectures

    return {t: dict(a.tiny_config) for t, a in sorted(get_architectures().items()) if getattr(a, "tiny_config", None)}


def tiny_config(model_type: str, **overrides):
    from transformers import AutoConfig

    configs = tiny_configs()
    if model_type not in configs:
        raise ValueError(f"no tiny config for {model_type!r}; known: {', '.join(configs)}")
    kwargs = configs[model_type]
    kwargs.update(vocab_size=len(SPECIALS) + len(WORDS), pad_token_id=1, bos_token_id=2, eos_token_id=3)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, seed: int = 0, **overrides):
    """A randomly initialised fp32 causal LM of ``model_type``, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # transformers initialises biases and attention sinks to zero or small values; random ones exercise every term
    # of the math.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "sinks")):
                p.normal_(0.0, 0.1)
    return model.eval()


def write_tiny_checkpoint(model_type: str, path: str, seed: int = 0, **overrides) -> str:
    """Write a tiny ``model_type`` checkpoint (weights, config, generation config, tokenizer) to ``path``."""
    model = tiny_model(model_type, seed=seed, **overrides)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="qaic-moe-tiny", description="Write a tiny random MoE checkpoint.")
    parser.add_argument("model_type", choices=sorted(tiny_configs()))
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_tiny_checkpoint(args.model_type, args.path, seed=args.seed)
    print(f"wrote a tiny {args.model_type} checkpoint to {args.path}")


if __name__ == "__main__":
    main()
