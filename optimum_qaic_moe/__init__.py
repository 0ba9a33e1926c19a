"""optimum-qaic-moe: Mixture-of-Experts models on Qualcomm Cloud AI 100, through Hugging Face Optimum."""

__version__ = "0.1.0"

__all__ = ["QAICModelForCausalLM", "__version__"]


def __getattr__(name):
    # Lazy so that `import optimum_qaic_moe` (and the CLI's --help) stays free of torch.
    if name == "QAICModelForCausalLM":
        from .modeling import QAICModelForCausalLM

        return QAICModelForCausalLM
    raise AttributeError(name)
