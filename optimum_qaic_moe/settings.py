"""Export and compile settings shared by the CLI and ``QAICModelForCausalLM``.

Plain Python only (no torch): the CLI validates input with it before any heavy import.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

SUPPORTED_TASKS = ("text-generation-with-past",)
DISPATCHES = ("blocked", "grouped", "loop")
COMPILE_MODES = ("auto", "always", "never")
HW_VERSIONS = ("ai100", "ai200")


class UserError(ValueError):
    """Bad input or environment. The CLI prints its message as one line and exits non-zero."""


@dataclass
class ExportSettings:
    model: str = ""
    output: str = ""
    task: str = "text-generation-with-past"
    batch_size: int = 1
    prefill_seq_len: int = 128
    ctx_len: int = 1024
    num_cores: int = 16
    moe_prefill_packed_chunk_size: int | str = 256  # rows, or "auto" (the MoE cost model picks)
    moe_prefill_dispatch: str = "blocked"
    prefill_only: bool = False
    decode_only: bool = False
    enable_chunking: bool = True
    mxfp6_matmul: bool = False
    mxint8_kv_cache: bool = False
    mos: Optional[int] = None
    aic_enable_depth_first: bool = False
    num_devices: int = 1
    aic_hw_version: str = "ai100"
    compile: str = "auto"
    compiler: Optional[str] = None
    opset: int = 18
    verify: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> "ExportSettings":
        if not self.model:
            raise UserError("--model is required: give a local directory holding config.json and the weights")
        if not os.path.isdir(self.model):
            raise UserError(f"model directory not found: {self.model} (pass a local checkpoint directory to --model)")
        if not os.path.isfile(os.path.join(self.model, "config.json")):
            raise UserError(f"no config.json in {self.model}: --model must be a transformers checkpoint directory")
        if self.task not in SUPPORTED_TASKS:
            raise UserError(f"unknown task {self.task!r}: use one of {', '.join(SUPPORTED_TASKS)}")
        chunk = self.moe_prefill_packed_chunk_size
        if chunk != "auto" and not (isinstance(chunk, int) and chunk >= 1):
            raise UserError(f"--moe-prefill-packed-chunk-size must be a positive integer or 'auto', got {chunk!r}")
        for name in ("batch_size", "prefill_seq_len", "ctx_len", "num_cores", "num_devices"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be a positive integer, got {value!r}")
        if self.mos is not None and self.mos < 1:
            raise UserError(f"--mos must be a positive integer, got {self.mos}")
        if self.prefill_seq_len > self.ctx_len:
            raise UserError(f"--prefill-seq-len {self.prefill_seq_len} is longer than --ctx-len {self.ctx_len}: "
                            "raise --ctx-len or lower --prefill-seq-len")
        if self.prefill_only and self.decode_only:
            raise UserError("--prefill-only and --decode-only exclude each other: pass at most one")
        if self.moe_prefill_dispatch not in DISPATCHES:
            raise UserError(f"--moe-prefill-dispatch must be one of {', '.join(DISPATCHES)}")
        if self.compile not in COMPILE_MODES:
            raise UserError(f"--compile must be one of {', '.join(COMPILE_MODES)}")
        if self.aic_hw_version not in HW_VERSIONS:
            raise UserError(f"--aic-hw-version must be one of {', '.join(HW_VERSIONS)}")
        if not 14 <= self.opset <= 23:
            raise UserError(f"--opset {self.opset} is not supported: use an opset between 14 and 23")
        return self

    @property
    def graphs(self) -> tuple:
        if self.prefill_only:
            return ("prefill",)
        if self.decode_only:
            return ("decode",)
        return ("prefill", "decode")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExportSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
