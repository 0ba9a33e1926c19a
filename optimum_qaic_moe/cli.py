"""`optimum-cli export qaic`: its options are generated from the ``ExportSettings`` fields (settings.py).

Import time is argparse and plain Python only (``optimum-cli --help`` imports this module for every command);
``run()`` imports the export pipeline.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from argparse import SUPPRESS, Action, ArgumentParser, RawDescriptionHelpFormatter

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from .settings import GROUPS, ExportSettings, argparse_spec, fields_by_group

DESCRIPTION = """\
Export a Mixture-of-Experts checkpoint (Qwen3-MoE, GPT-OSS, Mixtral, Qwen2-MoE) to Qualcomm Cloud AI 100: ONNX
graphs with the QAIC custom ops (a prefill graph with the expert-blocked, NSP-parallel MoE, and a decode graph), the
compiler inputs, and the compiled program when qaic-compile is installed (else compile.sh). The graphs are checked
in onnxruntime against transformers before anything is written to OUTPUT."""

EPILOG = """\
examples:
  optimum-cli export qaic --model Qwen/Qwen3-30B-A3B --prefill-seq-len 512 --ctx-len 4096 qwen3-30b-a3b-qaic
  optimum-cli export qaic -m ./tiny-qwen3-moe --prefill-seq-len 16 --ctx-len 128 --num-cores 4 tiny-qaic

Progress lines go to stderr; TRANSFORMERS_VERBOSITY=error silences them."""

FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(ExportSettings))


class _OneLineErrorParser(ArgumentParser):
    """argparse's own errors (a bad value, a missing --model, an unknown option) as one ``error: ...`` line and
    exit status 2, like every other error of this command, instead of a usage block."""

    def error(self, message: str):
        fail(f"{message} (see optimum-cli export qaic --help)")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # optimum-cli's root parser would report them with its own usage block
            flags = [s for action in self._actions for s in action.option_strings]
            close = [m for e in extras if e.startswith("--") for m in difflib.get_close_matches(e, flags, n=1)]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return namespace, extras


USAGE = "optimum-cli export qaic --model MODEL [options] OUTPUT"


def _formatter(prog: str) -> RawDescriptionHelpFormatter:
    return RawDescriptionHelpFormatter(prog, max_help_position=38)


def parse_args_qaic(parser: ArgumentParser) -> None:
    # optimum-cli creates the parser (add_parser with a help string only): give it our description, example,
    # formatter and one-line errors.
    parser.__class__ = _OneLineErrorParser
    parser.usage, parser.description, parser.epilog, parser.formatter_class = USAGE, DESCRIPTION, EPILOG, _formatter
    for group, fields in fields_by_group().items():
        title, description = GROUPS[group]
        section = parser.add_argument_group(title, description)
        for f in fields:
            names, kwargs = argparse_spec(f)
            section.add_argument(*names, **kwargs)
    parser.add_argument(
        "--list-plugins",
        action=ListPluginsAction,
        help="print the loaded plugins (distribution, version, hooks, what each registers) as JSON and exit",
    )


class ListPluginsAction(Action):
    """``--list-plugins``: like ``--version``, it acts and exits while parsing, so no other argument is needed."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, default=SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import json

        from .plugins import list_plugins
        from .settings import QAICError

        try:
            print(json.dumps(list_plugins(), indent=2))
        except QAICError as e:  # a broken plugin
            fail(str(e))
        parser.exit(0)


def fail(message: str, status: int = 2):
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    print("error: " + " | ".join(lines), file=sys.stderr)
    sys.exit(status)


class QAICExportCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="qaic", help="Export a MoE checkpoint (Qwen3-MoE, GPT-OSS, Mixtral, Qwen2-MoE) to Qualcomm Cloud AI 100."
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parse_args_qaic(parser)

    def run(self) -> None:
        from .settings import QAICError

        # Only the options given are in the namespace: the others take their ExportSettings defaults.
        settings = ExportSettings(**{k: v for k, v in vars(self.args).items() if k in FIELD_NAMES})
        try:
            settings.validate()
            from .logging import use_cli_verbosity

            use_cli_verbosity()
            from .exporters.main import run_export  # the pipeline: torch, transformers, onnx, onnxruntime

            run_export(settings)
        except QAICError as e:
            fail(str(e))
        except OSError as e:  # the environment: a full disk, a read-only directory, ...
            fail(f"{e.filename}: {e.strerror}" if e.filename else str(e))
        except KeyboardInterrupt as e:  # the compile step says what it leaves (the export is already complete)
            fail(str(e) or "interrupted; no artifacts were left that look complete", status=130)
