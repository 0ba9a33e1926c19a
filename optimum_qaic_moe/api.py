"""The Python export API, the counterpart of ``optimum.exporters.onnx.main_export``.

    from optimum_qaic_moe import main_export

    main_export("Qwen/Qwen3-30B-A3B", "qwen3-30b-qaic", prefill_seq_len=512, ctx_len=4096, num_cores=16)

Its keyword parameters are the ``ExportSettings`` fields (the CLI options in snake_case); errors name them as
parameters (``num_cores``), where the CLI's name its flags (``--num-cores``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from contextlib import contextmanager

from .settings import ExportSettings, QAICError, default_of, field_types, python_names

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(ExportSettings) if f.name not in ("model", "output"))


def main_export(model_name_or_path: str, output: str, **options) -> str:
    """Export a MoE checkpoint (Qwen3-MoE, GPT-OSS, Mixtral, Qwen2-MoE) to QAIC artifacts in ``output``; returns
    the output directory.

    ``model_name_or_path``: a local checkpoint directory or a Hugging Face Hub model id. The export is verified
    in onnxruntime against transformers (unless ``verify=False``) and compiled when a QAIC compiler is found
    (``compile="auto"``). Raises ``optimum_qaic_moe.UserError`` (a ``ValueError``) for bad input, with a message
    that names the parameter and the fix, and ``TypeError`` for an unknown keyword.
    """
    settings = settings_from_options(model_name_or_path, output, options, caller="main_export")
    with python_errors():
        settings.validate()
        from .exporters.main import run_export

        return run_export(settings)


def settings_from_options(model: str, output: str, options: dict, caller: str) -> ExportSettings:
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        hints = [
            f"{name} (did you mean {close[0]}?)" if close else name
            for name in unknown
            for close in [difflib.get_close_matches(name, OPTION_NAMES, n=1)]
        ]
        raise TypeError(f"{caller}() got unexpected keyword argument(s): {', '.join(hints)}")
    return ExportSettings(model=model, output=output, **options)


@contextmanager
def python_errors():
    """Re-raise the package's errors with the Python parameter names in place of the CLI flags."""
    try:
        yield
    except QAICError as e:
        e.args = (python_names(str(e)),) + e.args[1:]
        raise


def _options_doc() -> str:
    lines = ["", "    Options (keyword only; defaults in parentheses):", ""]
    for f in dataclasses.fields(ExportSettings):
        if f.name in OPTION_NAMES:
            lines.append(f"    - ``{f.name}`` ({default_of(f)!r}): {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def _signature() -> inspect.Signature:
    params = [
        inspect.Parameter("model_name_or_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
        inspect.Parameter("output", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
    ]
    types = field_types()
    params += [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default_of(f), annotation=types[f.name])
        for f in dataclasses.fields(ExportSettings)
        if f.name in OPTION_NAMES
    ]
    return inspect.Signature(params, return_annotation=str)


# help(main_export) and IDEs show every option with its default, generated from the same fields as the CLI.
if main_export.__doc__ is not None:  # None under python -OO
    main_export.__doc__ += _options_doc()
main_export.__signature__ = _signature()  # type: ignore[attr-defined]  # read by inspect; typeshed lacks it
