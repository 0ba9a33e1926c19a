"""Former home of the runners, kept so that ``from optimum_qaic_moe.runtime.session import CausalLMRunner`` keeps
working. The code lives in ``runner.py`` (CausalLMRunner and the two KV-cache backends), ``ort.py``
(onnxruntime) and ``qaic.py`` (the QAIC runtime)."""

from .ort import OrtGraph
from .runner import CausalLMRunner

__all__ = ["CausalLMRunner", "OrtGraph"]
