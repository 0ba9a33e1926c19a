"""Export options: declared once, as the fields of ``ExportSettings``.

Each field carries its help line and CLI group in its metadata (see ``option``); its type gives the CLI
choices (``Literal``) and the validation; its default is the only default. ``optimum-cli export qaic``, the
Python API (``main_export``, ``QAICModelForCausalLM.from_pretrained(export=True)``) and the README's option
table are all generated from these fields.

Adding an option is adding a field: ``name: type = option(default, help="one line", group="...")``. Types the
CLI understands: ``bool`` (a flag), ``int``, ``float``, ``str``, ``X | None``, ``Literal[...]`` (choices), a union
such as ``int | Literal["auto"]`` (values tried in order), and ``list[X]`` (a repeatable flag, or ``nargs``); use
``default_factory=list`` for a list. No default, choice or help text is written anywhere else.

Plain Python only (no torch): the CLI parses and validates with it before any heavy import.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal


class QAICError(Exception):
    """Base class of the errors this package raises on purpose. The CLI prints any of them as one line
    ``error: ...`` and exits non-zero."""


class UserError(QAICError, ValueError):
    """Bad input or environment. The message names the problem and the fix."""


# CLI help sections, in the order they are printed: title and one line of description.
GROUPS = {
    "model": ("Model", "the checkpoint to export: a local directory or a Hugging Face Hub model id"),
    "shapes": ("Shapes", "the static shapes the graphs are exported (and compiled) for"),
    "moe": ("MoE dispatch", "how the prefill graph runs the experts"),
    "compile": ("Compile", "the QAIC compiler step (needs the QAIC platform SDK)"),
    "onnx": ("ONNX", "the exported graphs"),
    "verification": ("Verification", "the built-in check of the export against transformers"),
}


def option(default: Any = MISSING, *, help: str, group: str, default_factory: Any = MISSING, **cli: Any):
    """An ``ExportSettings`` field. ``help``: one line; ``group``: a key of ``GROUPS``. Optional ``cli`` keys:

    - ``flag``: the CLI flag (default ``--field-name``); a bool field whose flag starts with ``--no-`` stores
      False, any other bool flag stores True;
    - ``short``: a short alias (``-m``); ``metavar``; ``positional``: an argument without a flag;
    - ``required``: the CLI demands it (the Python API takes it as a parameter);
    - ``minimum``: the smallest allowed value of an int field;
    - ``nargs``: for a ``list[...]`` field, argparse's nargs (``"+"``: several values after one flag); without
      it the flag is repeatable (``--flag a --flag b``);
    - ``separator``: for an ``X | list[X]`` field, one CLI value holds several separated by it (``4096,8192``);
    - ``flag_help``: the CLI flag's help when it reads differently from the field's (``--no-verify``);
    - ``record=False``: kept out of ``qaic_config.json`` (secrets such as ``token``, and the output path).
    """
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}: use one of {', '.join(GROUPS)}")
    return field(default=default, default_factory=default_factory, metadata={"help": help, "group": group, **cli})


@dataclass
class ExportSettings:
    model: str = option(
        "",
        required=True,
        short="-m",
        metavar="MODEL",
        group="model",
        help="checkpoint directory or Hub model id (Qwen3-MoE, GPT-OSS, Mixtral, Qwen2-MoE, or a plugin's)",
    )
    output: str = option(
        "", positional=True, record=False, metavar="OUTPUT", group="model", help="directory to write the export to"
    )
    overwrite: bool = option(
        False,
        group="model",
        help="export into a non-empty OUTPUT that holds no earlier export (files of other "
        "names are kept; an earlier export is always replaced)",
    )
    task: Literal["text-generation-with-past"] = option(
        "text-generation-with-past",
        metavar="TASK",
        group="model",
        help="text-generation-with-past, the only task (graphs carry the KV cache)",
    )
    revision: str | None = option(None, metavar="REV", group="model", help="Hub branch, tag or commit (default: main)")
    subfolder: str = option("", metavar="DIR", group="model", help="checkpoint folder inside the directory or repo")
    cache_dir: str | None = option(
        None, metavar="DIR", group="model", help="Hugging Face cache (default: HF_HUB_CACHE)"
    )
    token: str | None = option(
        None, metavar="TOKEN", group="model", record=False, help="Hub token for private or gated models"
    )
    local_files_only: bool = option(False, group="model", help="use only files already in the Hugging Face cache")
    trust_remote_code: bool = option(False, group="model", help="allow custom code from the checkpoint")

    batch_size: int = option(1, minimum=1, group="shapes", help="batch size of both graphs")
    prefill_seq_len: int = option(
        128, minimum=1, group="shapes", help="tokens per prefill call; longer prompts run as chunks"
    )
    ctx_len: int | list[int] = option(
        1024,
        minimum=1,
        separator=",",
        metavar="N[,N...]",
        group="shapes",
        help="KV cache length: prompt plus generated tokens; several values "
        "(4096,8192) give one graph with one compiler specialization each",
    )
    prefill_only: bool = option(False, group="shapes", help="export only the prefill graph")
    decode_only: bool = option(False, group="shapes", help="export only the decode graph")
    enable_chunking: bool = option(
        True, flag="--enable-chunking", group="shapes", help="accepted for QEfficient compatibility (always on)"
    )

    num_cores: int = option(16, minimum=1, group="moe", help="NSPs the experts are dealt over, and compiled for")
    moe_prefill_packed_chunk_size: int | Literal["auto"] = option(
        256,
        minimum=1,
        metavar="C",
        group="moe",
        help="rows per packed chunk (blocked) or per tile (grouped); auto: chosen by the cost model",
    )
    moe_prefill_dispatch: Literal["blocked", "grouped", "loop"] = option(
        "blocked",
        metavar="NAME",
        group="moe",
        help="MoE prefill: blocked (NSP-parallel), grouped (~2x ideal FLOPs) or loop",
    )

    compile: Literal["auto", "always", "never"] = option(
        "auto", group="compile", help="auto: compile if a compiler is found, else write compile.sh"
    )
    compile_backend: str = option(
        "qaic-compile", metavar="NAME", group="compile", help="compile backend; plugins can register more"
    )
    compiler: str | None = option(
        None, metavar="PATH", group="compile", help="qaic-compile to run (default: PATH, then /opt/qti-aic/exec)"
    )
    aic_hw_version: Literal["auto", "ai100", "ai200"] = option(
        "auto", group="compile", help="target hardware version; auto asks qaic-util, else ai100"
    )
    compiler_options: list[str] = option(
        default_factory=list,
        flag="--compiler-option",
        metavar="OPT",
        group="compile",
        help="passed to the compiler as given, e.g. --compiler-option=-sub-functions (repeatable)",
    )
    num_devices: int = option(1, minimum=1, group="compile", help="devices to partition the program over")
    mxfp6_matmul: bool = option(False, group="compile", help="compile matmul weights to MXFP6")
    mxint8_kv_cache: bool = option(False, group="compile", help="KV cache in MXINT8 on the device (else fp16)")
    mos: int | None = option(None, minimum=1, group="compile", help="compiler -mos (maximum output split)")
    aic_enable_depth_first: bool = option(False, group="compile", help="compiler -aic-enable-depth-first")

    opset: int = option(18, group="onnx", help="ONNX opset, 14 to 23")

    verify: bool = option(
        True,
        flag="--no-verify",
        group="verification",
        help="compare the exported graphs in onnxruntime with transformers",
        flag_help="skip comparing the graphs in onnxruntime with transformers",
    )

    def validate(self) -> ExportSettings:
        """Types, ranges and combinations. Messages name the CLI flags; the Python API translates them to its
        parameter names (``python_names``)."""
        hints = _type_hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, hints[f.name]):
                raise UserError(f"{flag_of(f)} must be {_describe(hints[f.name])}, got {value!r}")
            minimum = f.metadata.get("minimum")
            for item in value if isinstance(value, list) else [value]:  # a list field: each of its values
                if minimum is not None and isinstance(item, int) and item < minimum:
                    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
                    raise UserError(f"{flag_of(f)} must be {wanted}, got {item!r}")
        if not self.model:
            raise UserError("--model is required: give a local checkpoint directory or a Hub model id")
        if not self.ctx_lens:
            raise UserError("--ctx-len needs at least one value")
        if self.prefill_seq_len > min(self.ctx_lens):
            raise UserError(
                f"--prefill-seq-len {self.prefill_seq_len} is longer than --ctx-len "
                f"{min(self.ctx_lens)}: raise --ctx-len or lower --prefill-seq-len"
            )
        if self.prefill_only and self.decode_only:
            raise UserError("--prefill-only and --decode-only exclude each other: pass at most one")
        if not 14 <= self.opset <= 23:
            raise UserError(f"--opset {self.opset} is not supported: use an opset between 14 and 23")
        return self

    @property
    def ctx_lens(self) -> list[int]:
        """The context lengths to serve, ascending (``ctx_len`` is one value or several)."""
        return sorted(set(self.ctx_len if isinstance(self.ctx_len, list) else [self.ctx_len]))

    @property
    def graphs(self) -> tuple:
        if self.prefill_only:
            return ("prefill",)
        if self.decode_only:
            return ("decode",)
        return ("prefill", "decode")

    @property
    def loading_options(self) -> dict[str, Any]:
        """The standard Hugging Face loading keywords, as ``huggingface_hub`` and transformers name them."""
        return {
            "revision": self.revision,
            "subfolder": self.subfolder,
            "cache_dir": self.cache_dir,
            "token": self.token,
            "local_files_only": self.local_files_only,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recorded(self) -> dict:
        """What ``qaic_config.json`` records: every field except secrets and the output path."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("record", True)}

    @classmethod
    def from_dict(cls, data: dict) -> ExportSettings:
        """Fields from ``data``; other keys are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_record(cls, data: dict, where: str) -> ExportSettings:
        """The settings recorded in an export's ``qaic_config.json``, each value checked against its field's type
        (``where`` names the file in the error). Keys this version does not know are ignored."""
        hints = _type_hints()
        for f in dataclasses.fields(cls):
            if f.name in data and not _has_type(data[f.name], hints[f.name]):
                raise UserError(
                    f"{where}: settings.{f.name} must be {_describe(hints[f.name])}, "
                    f"got {data[f.name]!r}: the file was edited or is damaged; re-export"
                )
        return cls.from_dict(data)


# -- the CLI and the Python API, generated from the fields ----------------------------------------------------


def fields_by_group() -> dict[str, list[dataclasses.Field]]:
    out: dict[str, list[dataclasses.Field]] = {group: [] for group in GROUPS}
    for f in dataclasses.fields(ExportSettings):
        out[f.metadata["group"]].append(f)
    return out


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default  # a field has one or the other


def python_names(message: str) -> str:
    """Rewrite the CLI flags in an error message as the Python API's parameter names (``--num-cores`` ->
    ``num_cores``, ``--no-verify`` -> ``verify=False``), so each interface speaks its own language."""
    table = {}
    for f in dataclasses.fields(ExportSettings):
        flag = flag_of(f)
        inverted = _hint_base(_type_hints()[f.name]) is bool and flag.startswith("--no-")
        table[flag] = f"{f.name}=False" if inverted else f.name
    pattern = re.compile("|".join(re.escape(flag) for flag in sorted(table, key=len, reverse=True)) + r"(?![\w-])")
    return pattern.sub(lambda m: table[m.group(0)], message)


def argparse_spec(f: dataclasses.Field) -> tuple:
    """(names, add_argument keywords) for one field. Defaults stay in the dataclass: argparse leaves an option
    that was not given out of the namespace (``SUPPRESS``), and the field default applies."""
    import argparse

    hint = _type_hints()[f.name]
    base = _hint_base(hint)
    kwargs: dict[str, Any] = {"help": _help_line(f)}
    if f.metadata.get("positional"):
        return [f.name], kwargs
    flag = flag_of(f)
    names = [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])
    kwargs.update(dest=f.name, default=argparse.SUPPRESS)
    if f.metadata.get("required"):
        kwargs["required"] = True
    if base is bool:
        kwargs["action"] = "store_false" if flag.startswith("--no-") else "store_true"
        return names, kwargs
    if f.metadata.get("separator"):
        kwargs.update(type=_separated_parser(f), metavar=f.metadata.get("metavar"))
        return names, kwargs
    if typing.get_origin(base) is list:  # repeatable flag, or several values after one flag with nargs="+"
        (base,) = typing.get_args(base)
        kwargs.update({"nargs": f.metadata["nargs"]} if f.metadata.get("nargs") else {"action": "append"})
    if typing.get_origin(base) is Literal:
        kwargs["choices"] = list(typing.get_args(base))
    else:
        kwargs["type"] = _text_parser(base)
        kwargs["metavar"] = "N" if base is int else None
    if f.metadata.get("metavar"):
        kwargs["metavar"] = f.metadata["metavar"]
    return names, {k: v for k, v in kwargs.items() if v is not None}


def parse_text(text: str, hint) -> Any:
    """A CLI value of type ``hint``: int, float, str, a Literal, or a union of them tried in order
    (``int | Literal["auto"]`` takes ``7`` and ``auto``). Raises ValueError naming what was expected."""
    hint = _hint_base(hint)
    origin = typing.get_origin(hint)
    if origin in UNIONS:
        for member in typing.get_args(hint):
            try:
                return parse_text(text, member)
            except ValueError:
                continue
        raise ValueError(f"expected {_describe(hint)}, got {text!r}")
    if origin is Literal:
        for choice in typing.get_args(hint):
            if text == str(choice):
                return choice
        raise ValueError(f"expected {_describe(hint)}, got {text!r}")
    return hint(text)


def _separated_parser(f: dataclasses.Field):
    """``int | list[int]`` from ``"4096"`` or ``"4096,8192"``."""
    item = next(a for a in typing.get_args(_type_hints()[f.name]) if typing.get_origin(a) is not list)

    def parse(text: str):
        import argparse

        try:
            values = [parse_text(v.strip(), item) for v in text.split(f.metadata["separator"])]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return values[0] if len(values) == 1 else values

    parse.__name__ = _describe(item)
    return parse


def _text_parser(hint):
    if hint in (int, float, str):
        return hint  # argparse's own message: "invalid int value: 'x'"

    def parse(text: str):
        import argparse

        try:
            return parse_text(text, hint)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = _describe(hint)
    return parse


def options_table() -> str:
    """The README's option table (Markdown), generated from the fields."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for fields in fields_by_group().values():
        for f in fields:
            if f.metadata.get("positional"):
                continue
            default = "required" if f.metadata.get("required") else _default_text(f)
            text = f.metadata.get("flag_help") or f.metadata["help"]
            choices = _choices(f)
            rows.append(f"| `{flag_of(f)}` | {default} | {text}{f' (one of {choices})' if choices else ''} |")
    return "\n".join(rows)


def _help_line(f: dataclasses.Field) -> str:
    """The field's help, then what the CLI shows in braces elsewhere: the choices when a metavar hides them,
    and the default."""
    notes = []
    if f.metadata.get("metavar") and _choices(f):
        notes.append(f"one of {_choices(f)}")
    default = _default_text(f)
    if default and not f.metadata.get("required"):
        notes.append(f"default: {default.strip('`')}")
    text = f.metadata.get("flag_help") or f.metadata["help"]
    return f"{text} ({'; '.join(notes)})" if notes else text


def _choices(f: dataclasses.Field) -> str:
    """``a, b, c`` for a Literal field with more than one value, else empty."""
    hint = _hint_base(_type_hints()[f.name])
    values = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
    return ", ".join(map(str, values)) if len(values) > 1 else ""


def _default_text(f: dataclasses.Field) -> str:
    value = default_of(f)
    hint = _hint_base(_type_hints()[f.name])
    only_choice = typing.get_origin(hint) is Literal and len(typing.get_args(hint)) == 1
    if isinstance(value, bool) or value is None or value == "" or value == [] or only_choice:
        return ""
    return f"`{value}`"


# -- types ----------------------------------------------------------------------------------------------------

_HINTS: dict[str, Any] | None = None
UNIONS = (typing.Union, types.UnionType)  # Optional[X] and X | None


def field_types() -> dict[str, Any]:
    """{field name: its type, resolved} (``Literal[...]``, ``int | None``, ...)."""
    return dict(_type_hints())


def _type_hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(ExportSettings)
    return _HINTS


def _hint_base(hint):
    """``X | None`` -> X; anything else unchanged."""
    if typing.get_origin(hint) in UNIONS:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _has_type(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in UNIONS:
        return any(_has_type(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in UNIONS:
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(hint))
    if origin is list:
        return "a list"
    return {int: "an integer", str: "a string", bool: "True or False", float: "a number", type(None): "None"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
