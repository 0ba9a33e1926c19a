"""optimum-qaic-moe: Mixture-of-Experts models on Qualcomm Cloud AI 100, through Hugging Face Optimum.

from optimum_qaic_moe import QAICModelForCausalLM, main_export
"""

__version__ = "0.1.0"

__all__ = ["QAICError", "QAICModelForCausalLM", "UserError", "__version__", "main_export"]

from .settings import QAICError, UserError  # plain Python: cheap


def __getattr__(name):
    # Lazy so that `import optimum_qaic_moe` (and the CLI's --help) stays free of torch.
    if name == "QAICModelForCausalLM":
        from .modeling import QAICModelForCausalLM

        return QAICModelForCausalLM
    if name == "main_export":
        from .api import main_export

        return main_export
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
