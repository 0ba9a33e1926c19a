"""`optimum-cli export qaic`: argument parsing only at import time; the work happens in ``run()``."""

from __future__ import annotations

import sys
from argparse import SUPPRESS, Action, ArgumentParser, ArgumentTypeError

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


def _int_list(text: str):
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def parse_args_qaic(parser: ArgumentParser) -> None:
    parser.add_argument("output", help="Directory to write the QAIC artifacts to (prefill/, decode/, qaic_config.json).")
    parser.add_argument("--model", "-m", required=True, help="Local checkpoint directory (Qwen3-MoE or GPT-OSS).")
    parser.add_argument("--task", default="text-generation-with-past",
                        help="Export task (default: text-generation-with-past).")
    parser.add_argument("--batch-size", type=int, default=1, help="Batch size of both graphs (default: 1).")
    parser.add_argument("--prefill-seq-len", type=int, default=128,
                        help="Tokens per prefill call; longer prompts run as successive chunks (default: 128).")
    parser.add_argument("--ctx-len", type=_int_list, default=[1024],
                        help="KV cache length; several comma-separated values (4096,8192) give one graph with one "
                             "compiler specialization each (default: 1024).")
    parser.add_argument("--num-cores", type=int, default=16,
                        help="NSP cores: experts are dealt to this many cores in the blocked prefill, and the "
                             "compiler uses this many (default: 16). Any value >= 1 works.")
    parser.add_argument("--moe-prefill-packed-chunk-size", type=int, default=256,
                        help="Rows per packed chunk in the blocked MoE prefill (default: 256).")
    parser.add_argument("--moe-prefill-dispatch", choices=("blocked", "loop"), default="blocked",
                        help="MoE prefill dispatch: expert-blocked NSP-parallel (default) or the per-expert loop.")
    parser.add_argument("--prefill-only", action="store_true", help="Export only the prefill graph.")
    parser.add_argument("--decode-only", action="store_true", help="Export only the decode graph.")
    parser.add_argument("--enable-chunking", action="store_true",
                        help="Accepted for QEfficient compatibility: the prefill graph always reads and writes the "
                             "KV cache, so long prompts always run as chunks.")
    parser.add_argument("--mxfp6-matmul", action="store_true", help="Compile matmul weights to MXFP6.")
    parser.add_argument("--mxint8-kv-cache", action="store_true", help="Keep the KV cache in MXINT8 on device.")
    parser.add_argument("--mos", type=int, default=None, help="Compiler -mos (maximum output split).")
    parser.add_argument("--aic-enable-depth-first", action="store_true", help="Compiler -aic-enable-depth-first.")
    parser.add_argument("--num-devices", type=int, default=1,
                        help="Devices to partition the program over (default: 1).")
    parser.add_argument("--aic-hw-version", default="ai100", choices=("ai100", "ai200"),
                        help="Target hardware version (default: ai100).")
    parser.add_argument("--compile", choices=("auto", "always", "never"), default="auto",
                        help="auto: compile when qaic-compile is found, else write compile.sh; always: fail "
                             "without a compiler; never: export only (default: auto).")
    parser.add_argument("--compiler", default=None, help="Path to qaic-compile (default: PATH, then /opt/qti-aic/exec).")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Export into a non-empty OUTPUT that holds no earlier export: files of the same names "
                             "are replaced, all others kept. An earlier export is always replaced (atomically).")
    parser.add_argument("--no-verify", action="store_true",
                        help="Skip running the exported graphs in onnxruntime against transformers.")
    parser.add_argument("--list-plugins", action=ListPluginsAction,
                        help="Print the loaded plugins (distribution, version, hooks, what each registers) as JSON "
                             "and exit.")


class ListPluginsAction(Action):
    """``--list-plugins``: like ``--version``, it acts and exits while parsing, so no other argument is needed."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, default=SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import json

        from .plugins import list_plugins
        from .settings import UserError

        try:
            print(json.dumps(list_plugins(), indent=2))
        except UserError as e:  # a broken plugin
            parser.exit(2, f"error: {e}\n")
        parser.exit(0)


class QAICExportCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="qaic", help="Export a Qwen3-MoE or GPT-OSS checkpoint to Qualcomm Cloud AI 100.")

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parse_args_qaic(parser)

    def run(self) -> None:
        a = self.args
        from .settings import ExportSettings, UserError

        # Option dests are the ExportSettings field names; from_dict drops argparse's own keys.
        settings = ExportSettings.from_dict({**vars(a), "enable_chunking": True, "verify": not a.no_verify})
        try:
            settings.validate()
            from .exporters.main import main_export  # heavy: torch, transformers, onnx

            main_export(settings)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted; no artifacts were left that look complete", file=sys.stderr)
            sys.exit(130)
