"""Run an export: ``CausalLMRunner`` over onnxruntime (``device="cpu"``) or the QAIC runtime (``device="qaic"``)."""

from .runner import CausalLMRunner

__all__ = ["CausalLMRunner"]
