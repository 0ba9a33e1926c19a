"""Read a checkpoint's tensors straight from its safetensors files, in float32, whatever layout saved them.

- ``SafetensorsCheckpoint`` memory-maps a checkpoint directory (``model.safetensors``, or the shards listed by
  ``model.safetensors.index.json``) and reads any tensor, or only some of its dim-0 rows (one expert), as
  float32: bf16/fp16 converted, MXFP4 pairs (``X_blocks`` + ``X_scales``) dequantized exactly as transformers
  does it. Nothing is read until asked for.
- ``HFWeights`` gives every state_dict entry of the installed transformers' model, built on the meta device from
  the config, from such a checkpoint: it maps the per-expert layout (the Hub's, what transformers 4.x keeps)
  to the fused one (what transformers 5.x keeps) and back, and resolves tied embeddings. ``check()`` refuses
  a checkpoint that does not fit the model.
- ``check_config`` refuses a config.json that the installed transformers would silently read differently from
  what it says (a field renamed between transformers versions).

    weights = open_checkpoint(model_dir)  # check_config, meta model, HFWeights, check()
    w = weights.read("model.layers.0.mlp.experts.gate_up_proj", rows=slice(3, 4))  # expert 3 only
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass

import torch

from .settings import UserError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# safetensors dtype codes this reader converts to float32 (other codes are read only as MXFP4 pairs)
FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
STORED_DTYPES = {
    **FLOAT_DTYPES,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}

# The 16 FP4 (e2m1) code points of MXFP4, indexed by the 4-bit code.
FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
MXFP4_BLOCK = 32  # values sharing one scale: 16 bytes of two codes each


# ---------------------------------------------------------------------------------------------------------------
# safetensors files


@dataclass(frozen=True)
class _Stored:
    """One tensor as a safetensors file stores it."""

    shard: _Shard
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offset in the file
    end: int


class _Shard:
    """One safetensors file: its header parsed, its bytes mapped copy-on-write (the file is never written)."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > size - 8:
                    raise ValueError(f"header of {header_len} bytes in a file of {size}")
                header = json.loads(f.read(header_len))
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError, struct.error) as e:
            raise UserError(f"{path} is not a readable safetensors file ({e}): re-download or re-save it") from e
        header.pop("__metadata__", None)
        data_start = 8 + header_len
        self.tensors: dict[str, _Stored] = {}
        for name, info in header.items():
            try:
                begin, end = (data_start + int(o) for o in info["data_offsets"])
                stored = _Stored(self, info["dtype"], tuple(int(d) for d in info["shape"]), begin, end)
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(
                    f"{path} has a malformed header entry for {name} ({e!r}): re-download or re-save it"
                ) from e
            itemsize = STORED_DTYPES[stored.dtype].itemsize if stored.dtype in STORED_DTYPES else None
            if end > size or (itemsize and end - begin != _numel(stored.shape) * itemsize):
                raise UserError(f"{path} is truncated or corrupt at tensor {name}: re-download or re-save it")
            self.tensors[name] = stored

    def view(self, stored: _Stored, rows: range) -> torch.Tensor:
        """Rows ``rows`` of dim 0 in the stored dtype, a zero-copy view of the mapping."""
        dtype = STORED_DTYPES.get(stored.dtype)
        if dtype is None:
            raise UserError(
                f"{self.path}: tensors stored as {stored.dtype} are not supported (F32, BF16, F16, F64 "
                "and MXFP4 _blocks/_scales pairs are)"
            )
        shape = stored.shape or (1,)
        row_elems = _numel(shape[1:])
        count = len(rows) * row_elems
        out_shape = (len(rows), *shape[1:]) if stored.shape else ()
        if count == 0:
            return torch.empty(out_shape, dtype=dtype)
        offset = stored.begin + rows.start * row_elems * dtype.itemsize
        if offset % dtype.itemsize:  # the safetensors library aligns every tensor; other writers may not
            raw = torch.frombuffer(self._map, dtype=torch.uint8, count=count * dtype.itemsize, offset=offset)
            return raw.clone().view(dtype).view(out_shape)
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset).view(out_shape)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _rows(rows: slice | None, length: int) -> range:
    if rows is None:
        return range(length)
    picked = range(*rows.indices(length))
    if picked.step != 1:
        raise ValueError(f"rows must be a contiguous slice, got {rows}")
    return picked


def _weight_files(model_dir: str) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files of a checkpoint directory, and the index's name -> file map when sharded."""
    index_path = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{index_path} is not a readable safetensors index ({e}): re-download it") from e
        files = sorted(set(weight_map.values()))
        absent = [f for f in files if not os.path.isfile(os.path.join(model_dir, f))]
        if absent:
            raise UserError(
                f"{model_dir} lacks {len(absent)} of the {len(files)} shards its {INDEX_FILE} lists "
                f"({', '.join(absent[:3])}): the download is incomplete, fetch the missing shards"
            )
        return [os.path.join(model_dir, f) for f in files], weight_map
    if os.path.isfile(os.path.join(model_dir, SINGLE_FILE)):
        return [os.path.join(model_dir, SINGLE_FILE)], None
    raise UserError(
        f"no safetensors weights in {model_dir}: expected {SINGLE_FILE} or {INDEX_FILE} "
        "(a pytorch_model.bin checkpoint can be converted by loading it and calling save_pretrained)"
    )


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """MXFP4 to float32, bit for bit what transformers' ``convert_moe_packed_tensors`` computes in float32.

    blocks [..., G, 16] uint8 holds two FP4 e2m1 codes a byte, low nibble first; scales [..., G] uint8 holds
    each 32-value block's power of two, biased by 127. Returns [..., G * 32].
    """
    lut = torch.tensor(FP4_E2M1, dtype=torch.float32)
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).int()  # [..., G, 16, 2]: low nibble first
    values = lut[codes].flatten(-2)  # [..., G, 32]
    exponents = scales.to(torch.int32) - 127  # [..., G]
    return torch.ldexp(values, exponents.unsqueeze(-1)).flatten(-2)  # [..., G * 32]


@dataclass(frozen=True)
class _Mxfp4:
    """An MXFP4 pair: blocks [E, out, G, 16] + scales [E, out, G], logically [E, in = G * 32, out]."""

    blocks: _Stored
    scales: _Stored

    @property
    def shape(self) -> tuple[int, ...]:
        experts, out, groups = self.scales.shape
        return (experts, groups * MXFP4_BLOCK, out)

    def read(self, rows: range) -> torch.Tensor:
        blocks = self.blocks.shard.view(self.blocks, rows)  # [r, out, G, 16]
        scales = self.scales.shard.view(self.scales, rows)  # [r, out, G]
        # transformers keeps the experts as [E, in, out] (x @ W): the stored [out, in] rows are transposed.
        return dequantize_mxfp4(blocks, scales).transpose(1, 2).contiguous()  # [r, in, out]


def _pair_mxfp4(stored: dict[str, _Stored]) -> dict[str, _Mxfp4]:
    pairs = {}
    for name, blocks in stored.items():
        if not name.endswith("_blocks"):
            continue
        base = name[: -len("_blocks")]
        scales = stored.get(base + "_scales")
        if (
            scales is not None
            and blocks.dtype == scales.dtype == "U8"
            and len(blocks.shape) == 4
            and blocks.shape[-1] == MXFP4_BLOCK // 2
            and blocks.shape[:-1] == scales.shape
        ):
            pairs[base] = _Mxfp4(blocks, scales)
    return pairs


class SafetensorsCheckpoint:
    """The tensors of a checkpoint directory (model.safetensors or sharded with model.safetensors.index.json),
    memory-mapped; nothing is read until asked for.

    Names are the stored ones, except that an MXFP4 pair ``X_blocks`` + ``X_scales`` appears as ``X`` with the
    shape transformers gives it once dequantized ([E, in, out]).
    """

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        files, weight_map = _weight_files(model_dir)
        stored: dict[str, _Stored] = {}
        for path in files:
            shard = _Shard(path)
            for name, tensor in shard.tensors.items():
                if name in stored:
                    raise UserError(
                        f"{model_dir}: tensor {name} is in two shards ({stored[name].shard.path} and "
                        f"{path}): the checkpoint is corrupt, re-download or re-save it"
                    )
                stored[name] = tensor
        if weight_map is not None:
            lost = [
                n
                for n, f in weight_map.items()
                if n not in stored or stored[n].shard.path != os.path.join(model_dir, f)
            ]
            if lost:
                raise UserError(
                    f"{model_dir}: {len(lost)} tensors listed in {INDEX_FILE} are not in the shard it "
                    f"names ({', '.join(lost[:3])}): the download is incomplete or mixed, fetch it again"
                )
        self._mxfp4 = _pair_mxfp4(stored)
        paired = {p.blocks for p in self._mxfp4.values()} | {p.scales for p in self._mxfp4.values()}
        self._plain = {n: s for n, s in stored.items() if s not in paired}
        both = sorted(set(self._plain) & set(self._mxfp4))
        if both:
            raise UserError(
                f"{model_dir} holds {both[0]} twice, plain and as MXFP4 {both[0]}_blocks/_scales: keep one of them"
            )

    def names(self) -> list[str]:
        return sorted([*self._plain, *self._mxfp4])

    def __contains__(self, name: str) -> bool:
        return name in self._plain or name in self._mxfp4

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensor(name).shape

    def stored_dtype(self, name: str) -> str:
        """The safetensors dtype code (``"BF16"``, ``"F32"``, ...), or ``"MXFP4"`` for a blocks + scales pair."""
        tensor = self._tensor(name)
        return "MXFP4" if isinstance(tensor, _Mxfp4) else tensor.dtype

    def stored(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """Rows ``rows`` of dim 0 as stored (bf16 stays bf16), a zero-copy view of the mapped file; MXFP4, which no
        torch dtype holds, comes dequantized to float32."""
        tensor = self._tensor(name)
        picked = _rows(rows, tensor.shape[0] if tensor.shape else 1)
        return tensor.read(picked) if isinstance(tensor, _Mxfp4) else tensor.shard.view(tensor, picked)

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """float32, only rows ``rows`` of dim 0 (e.g. one expert); bf16/fp16 converted, MXFP4 dequantized; a
        zero-copy view of the mapped file when the stored dtype is already float32 (writes to it stay private to
        this process: the file is mapped copy-on-write)."""
        dtype = self.stored_dtype(name)
        if dtype not in FLOAT_DTYPES and dtype != "MXFP4":
            raise UserError(
                f"{self.model_dir}: {name} is stored as {dtype}, not as a float: this reader takes F32, "
                "BF16, F16, F64 and MXFP4 (_blocks + _scales) tensors"
            )
        return self.stored(name, rows).to(torch.float32)  # no copy when already float32

    def _tensor(self, name: str):
        if name in self._plain:
            return self._plain[name]
        if name in self._mxfp4:
            return self._mxfp4[name]
        raise KeyError(f"{name} is not in the checkpoint {self.model_dir}")


# ---------------------------------------------------------------------------------------------------------------
# transformers' model layouts


@dataclass(frozen=True)
class ExpertLayout:
    """How one model_type's experts are saved per expert (the Hub's format, transformers 4.x's modules) and fused
    (transformers 5.x's parameters). Names are relative to a decoder layer (``model.layers.{i}.``).

    fused: fused [E, D, ...] parameter -> the per-expert Linear weights (``{e}`` = expert index) whose dim 0 it
        concatenates, in order: gate_up_proj [E, 2I, H] = cat(gate_proj [I, H], up_proj [I, H]).
    renames: (4.x name part, 5.x name part) of the other tensors of the block.
    """

    fused: dict[str, tuple[str, ...]]
    renames: tuple[tuple[str, str], ...] = ()


_QWEN_EXPERTS = ExpertLayout(
    {
        "mlp.experts.gate_up_proj": ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"),
        "mlp.experts.down_proj": ("mlp.experts.{e}.down_proj.weight",),
    }
)

# GPT-OSS keeps the same fused [E, H, 2I] / [E, I, H] experts on every transformers line and in the Hub format:
# it needs no entry.
EXPERT_LAYOUTS: dict[str, ExpertLayout] = {
    "qwen3_moe": _QWEN_EXPERTS,
    "qwen2_moe": _QWEN_EXPERTS,
    "mixtral": ExpertLayout(
        {
            "mlp.experts.gate_up_proj": (
                "block_sparse_moe.experts.{e}.w1.weight",
                "block_sparse_moe.experts.{e}.w3.weight",
            ),
            "mlp.experts.down_proj": ("block_sparse_moe.experts.{e}.w2.weight",),
        },
        renames=((".block_sparse_moe.gate.", ".mlp.gate."),),
    ),
}


@dataclass(frozen=True)
class _Direct:
    """A model tensor stored under one checkpoint name, in the same layout."""

    name: str

    def inputs(self):
        return [self.name]

    def shape(self, ckpt: SafetensorsCheckpoint):
        return ckpt.shape(self.name)

    def read(self, ckpt: SafetensorsCheckpoint, rows: slice | None):
        return ckpt.read(self.name, rows)


@dataclass(frozen=True)
class _Stacked:
    """A fused [E, D, ...] model tensor from per-expert checkpoint tensors: expert e = cat(parts[e], dim 0)."""

    parts: tuple[tuple[str, ...], ...]  # [expert][part]
    absent: tuple[str, ...] = ()  # the parts the checkpoint lacks

    def inputs(self):
        return [n for expert in self.parts for n in expert if n not in self.absent]

    def shape(self, ckpt: SafetensorsCheckpoint):
        first = self._part_shapes(ckpt)
        return (len(self.parts), sum(s[0] for s in first), *first[0][1:])

    def odd_parts(self, ckpt: SafetensorsCheckpoint) -> list[str]:
        """The stored parts shaped unlike the same part of the first complete expert."""
        want = self._part_shapes(ckpt)
        return [
            f"{n} is {_dims(ckpt.shape(n))} in the checkpoint, {_dims(want[k])} like expert 0's"
            for expert in self.parts
            for k, n in enumerate(expert)
            if n not in self.absent and ckpt.shape(n) != want[k]
        ]

    def _part_shapes(self, ckpt: SafetensorsCheckpoint) -> list[tuple[int, ...]]:
        whole = next(e for e in self.parts if not set(e) & set(self.absent))
        return [ckpt.shape(n) for n in whole]

    def read(self, ckpt: SafetensorsCheckpoint, rows: slice | None):
        if self.absent:
            raise UserError(f"{ckpt.model_dir} lacks {self.absent[0]}")
        experts = _rows(rows, len(self.parts))
        out = torch.empty((len(experts), *self.shape(ckpt)[1:]), dtype=torch.float32)  # [r, D, ...]
        for i, e in enumerate(experts):
            start = 0
            for name in self.parts[e]:
                part = ckpt.stored(name)
                out[i, start : start + part.shape[0]].copy_(part)  # converts to float32 on the way
                start += part.shape[0]
        return out


@dataclass(frozen=True)
class _ExpertSlice:
    """A per-expert model tensor cut from a fused checkpoint tensor: fused[expert, start:stop]."""

    fused: str
    expert: int
    start: int
    stop: int

    def inputs(self):
        return [self.fused]

    def shape(self, ckpt: SafetensorsCheckpoint):
        return (self.stop - self.start, *ckpt.shape(self.fused)[2:])

    def read(self, ckpt: SafetensorsCheckpoint, rows: slice | None):
        picked = _rows(rows, self.stop - self.start)
        expert = ckpt.stored(self.fused, slice(self.expert, self.expert + 1))[0]  # [D, ...], a view
        return expert[self.start + picked.start : self.start + picked.stop].to(torch.float32)


def expert_name_regex(template: str) -> re.Pattern:
    """``mlp.experts.{e}.gate_proj.weight`` -> a regex matching ``<layer prefix>.mlp.experts.<e>.gate_proj.weight``."""
    return re.compile(r"^(?P<prefix>.+)\." + re.escape(template).replace(r"\{e\}", r"(?P<e>\d+)") + "$")


class HFWeights:
    """Every parameter (state_dict entry) of the installed transformers' model, built on the meta device from the
    config, read from a SafetensorsCheckpoint whatever layout saved it.

    A model tensor comes from the checkpoint tensor of the same name (or its 4.x/5.x rename), from per-expert
    tensors stacked into a fused one, from a slice of a fused tensor, or, when tied (``lm_head.weight`` with
    ``tie_word_embeddings``), from the tensor it is tied to.
    """

    def __init__(self, checkpoint: SafetensorsCheckpoint, meta_model):
        self.checkpoint = checkpoint
        self.config = meta_model.config
        self.model_class = type(meta_model).__name__
        layout = EXPERT_LAYOUTS.get(getattr(meta_model.config, "model_type", ""), ExpertLayout({}))
        state = meta_model.state_dict(keep_vars=True)
        self._shapes = {name: tuple(t.shape) for name, t in state.items()}
        self._tied: dict[str, str] = {}  # alias -> the name transformers loads it under (the first one)
        first_of: dict[int, str] = {}
        for name, tensor in state.items():
            self._tied[name] = first_of.setdefault(id(tensor), name)
        self._tied = {alias: name for alias, name in self._tied.items() if alias != name}
        self._ignored = [re.compile(p) for p in getattr(meta_model, "_keys_to_ignore_on_load_unexpected", None) or []]
        self._sources = {}
        for name in self._shapes:
            if name not in self._tied:
                source = self._resolve(name, layout)
                if source is not None:
                    self._sources[name] = source

    # -- public API ----------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def tied_to(self, name: str) -> str | None:
        """The name ``name`` shares its tensor with (``model.embed_tokens.weight`` for a tied ``lm_head.weight``)."""
        return self._tied.get(name)

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """float32, only rows ``rows`` of dim 0 (for the fused experts: only those experts are read)."""
        if name not in self._shapes:
            raise KeyError(f"{name} is not a parameter of {self.model_class}")
        source = self._sources.get(self._tied.get(name, name))
        if source is None:
            raise UserError(f"{self.checkpoint.model_dir} has no tensor for {name} of {self.model_class}")
        return source.read(self.checkpoint, rows)

    def check(self) -> None:
        """Refuse (UserError, one line) a checkpoint with missing tensors, unexpected tensors or shape mismatches."""
        missing = [n for n in self._shapes if n not in self._tied and n not in self._sources]
        missing += [f"{a}, part of {n}" for n, s in self._sources.items() for a in getattr(s, "absent", ())]
        mismatched = [
            f"{n} is {_dims(s.shape(self.checkpoint))} in the checkpoint, {_dims(self._shapes[n])} in the model"
            for n, s in self._sources.items()
            if tuple(s.shape(self.checkpoint)) != self._shapes[n]
        ]
        mismatched += self._fused_mismatches()
        mismatched += [
            odd for s in self._sources.values() if isinstance(s, _Stacked) for odd in s.odd_parts(self.checkpoint)
        ]
        consumed = {i for s in self._sources.values() for i in s.inputs()}
        consumed |= {a for a in self._tied if a in self.checkpoint}  # transformers loads a tied alias as its target
        unexpected = [
            n for n in self.checkpoint.names() if n not in consumed and not any(p.search(n) for p in self._ignored)
        ]
        problems = [
            _count(missing, "missing tensor"),
            _count(unexpected, "unexpected tensor"),
            _count(mismatched, "shape mismatch", "shape mismatches"),
        ]
        problems = [p for p in problems if p]
        if problems:
            import transformers

            raise UserError(
                f"the checkpoint in {self.checkpoint.model_dir} does not fit the {self.model_class} that "
                f"transformers {transformers.__version__} builds from its config.json: "
                f"{'; '.join(problems)}. The weights and config.json disagree: complete the download, "
                "or use the config.json that came with these weights"
            )

    # -- resolution ----------------------------------------------------------------------------------------------

    def _resolve(self, name: str, layout: ExpertLayout):
        ckpt = self.checkpoint
        for candidate in _renamed(name, layout):
            if candidate in ckpt:
                return _Direct(candidate)
        for fused, templates in layout.fused.items():
            if name.endswith("." + fused):  # model fused, checkpoint per expert?
                prefix = name[: -len(fused) - 1]
                parts = tuple(
                    tuple(f"{prefix}.{t.format(e=e)}" for t in templates) for e in range(self._shapes[name][0])
                )
                absent = tuple(p for expert in parts for p in expert if p not in ckpt)
                if any(not set(expert) & set(absent) for expert in parts):  # stored per expert, maybe incompletely
                    return _Stacked(parts, absent)
            for k, template in enumerate(templates):  # model per expert, checkpoint fused?
                match = expert_name_regex(template).match(name)
                if match is None:
                    continue
                prefix, e = match["prefix"], int(match["e"])
                fused_name = next((c for c in _renamed(f"{prefix}.{fused}", layout) if c in ckpt), None)
                if fused_name is None:
                    continue
                sizes = [self._shapes.get(f"{prefix}.{t.format(e=e)}", (0,))[0] for t in templates]
                start = sum(sizes[:k])
                return _ExpertSlice(fused_name, e, start, start + sizes[k])
        return None

    def _fused_mismatches(self) -> list[str]:
        """A fused checkpoint tensor cut into per-expert model tensors must hold exactly the model's experts and
        parts: [E, sum of the parts' rows, ...]."""
        cut: dict[str, list[_ExpertSlice]] = {}
        for source in self._sources.values():
            if isinstance(source, _ExpertSlice):
                cut.setdefault(source.fused, []).append(source)
        out = []
        for fused, slices in cut.items():
            stored = self.checkpoint.shape(fused)
            experts = max(s.expert for s in slices) + 1
            rows = max(s.stop for s in slices)
            if stored[0] != experts or stored[1] != rows:
                out.append(
                    f"{fused} is {_dims(stored)} in the checkpoint, {_dims((experts, rows, *stored[2:]))} in the model"
                )
        return out


def _renamed(name: str, layout: ExpertLayout) -> list[str]:
    """``name`` and its spellings under the layout's 4.x <-> 5.x renames."""
    out = [name]
    for old, new in layout.renames:
        if new in name:
            out.append(name.replace(new, old))
        if old in name:
            out.append(name.replace(old, new))
    return out


def _count(items: list[str], noun: str, plural: str | None = None) -> str:
    if not items:
        return ""
    shown = "; ".join(items[:3]) + ("; ..." if len(items) > 3 else "")
    return f"{len(items)} {noun if len(items) == 1 else plural or noun + 's'} ({shown})"


def open_checkpoint(model_dir: str, config=None) -> HFWeights:
    """The weights of the checkpoint in ``model_dir`` for the installed transformers' model, checked: config.json
    (``check_config``) and the tensors (``HFWeights.check``) refuse with one line what transformers would load
    wrongly. ``config`` defaults to ``AutoConfig.from_pretrained(model_dir)``."""
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
    check_config(model_dir, config)
    weights = HFWeights(SafetensorsCheckpoint(model_dir), meta_model(config))
    weights.check()
    return weights


def _dims(shape) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def meta_model(config):
    """The installed transformers' causal LM for ``config``, on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# config.json checks

# Settings config.json may spell in more than one way because transformers renamed them between versions. For
# each group, the installed transformers reads the spelling its config class carries; a value given only under
# another spelling is silently ignored.
SYNONYMS = (("num_experts", "num_local_experts"),)

# Settings some transformers versions hard-code in the modeling code instead of reading them (4.57's GPT-OSS
# SwiGLU), with the hard-coded value: used when the installed config class does not carry the field.
HARD_CODED = {"gpt_oss": {"swiglu_limit": 7.0, "swiglu_alpha": 1.702}}

ROPE_FIELDS = ("rope_theta", "rope_scaling", "rope_parameters")
QUANTIZATIONS = {"mxfp4": ("gpt_oss",)}  # quant_method -> the model types whose checkpoints this reader takes


@dataclass(frozen=True)
class _Misread:
    """config.json says ``field = value``; the installed transformers runs with ``used_field = used``."""

    field: str
    value: object
    used_field: str
    used: object
    fix: tuple[str, object] | None  # the config.json entry that makes the installed transformers read it right


def check_config(model_dir: str, config) -> None:
    """Refuse (UserError, one line) a config.json holding fields the installed transformers ignores but that
    change the model: a setting written under a name only another transformers version reads (5.x's
    ``rope_parameters`` and ``num_local_experts`` under 4.57 leave Qwen3-MoE with rope_theta 10000 and 128
    experts), or a quantization this package cannot read. ``config`` is the installed transformers' config
    loaded from ``model_dir``."""
    import transformers

    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        raw = json.load(f)
    _check_quantization(raw, path)
    carried = _carried_fields(config)
    unread = {k for k in raw if k not in carried}
    misread = _rope_misread(raw, config, carried, unread) + _synonym_misread(raw, config, carried, unread)
    misread += _hard_coded_misread(raw, unread)
    if not misread:
        return
    what = "; ".join(
        f"{m.field} = {_show(m.value)} is ignored, the model would run with {m.used_field} = {_show(m.used)}"
        for m in misread
    )
    fixes = {m.fix[0]: m.fix[1] for m in misread if m.fix}
    fix = f"add {', '.join(f'{json.dumps(k)}: {json.dumps(v)}' for k, v in fixes.items())} to {path}" if fixes else ""
    if int(transformers.__version__.split(".")[0]) < 5:
        fix = f"{fix} or install transformers 5" if fix else "install transformers 5"
    raise UserError(
        f"transformers {transformers.__version__} would build a different model than {path} describes: {what}: {fix}"
    )


def _check_quantization(raw: dict, path: str) -> None:
    quant = raw.get("quantization_config")
    if not quant:
        return
    method = quant.get("quant_method")
    if raw.get("model_type") not in QUANTIZATIONS.get(method, ()):
        raise UserError(
            f"{path} declares quantization_config.quant_method {method!r} for {raw.get('model_type')}: "
            "only unquantized (float32/bf16/fp16) checkpoints and MXFP4 gpt-oss are read; use the "
            "model's unquantized release"
        )


def _carried_fields(config) -> set[str]:
    """The config.json fields the installed transformers' config class keeps as settings of its own."""
    try:
        return set(type(config)().to_dict())
    except (TypeError, ValueError):  # a config class that needs arguments: what this one holds
        return set(config.to_dict())


def _rope_misread(raw: dict, config, carried: set, unread: set) -> list[_Misread]:
    """RoPE is ``rope_theta`` + ``rope_scaling`` (transformers 4.x) or ``rope_parameters`` (5.x): compare what
    each ignored spelling says with what the installed transformers computes RoPE from."""
    five = "rope_parameters" in carried
    if five:
        used = dict(getattr(config, "rope_parameters", None) or {})
    else:
        used = {**_scaling(getattr(config, "rope_scaling", None)), "rope_theta": getattr(config, "rope_theta", None)}
    used.setdefault("rope_type", "default")
    said = {**_scaling(raw.get("rope_parameters")), **_scaling(raw.get("rope_scaling"))}  # the rope_type spelling
    out = []
    for field in ("rope_parameters", "rope_scaling", "rope_theta"):
        if field not in unread:
            continue
        given = (
            {"rope_theta": raw[field]} if field == "rope_theta" else _scaling(raw[field]) or {"rope_type": "default"}
        )
        for key, value in given.items():
            if _same(value, used.get(key)):
                continue
            if five:
                used_field, fix = f"rope_parameters.{key}", ("rope_parameters", {**used, **said, **given})
            elif key == "rope_theta":
                used_field, fix = "rope_theta", ("rope_theta", value)
            else:
                used_field = f"rope_scaling.{key}"
                fix = ("rope_scaling", {k: v for k, v in {**said, **given}.items() if k != "rope_theta"})
            out.append(_Misread(field if field == key else f"{field}.{key}", value, used_field, used.get(key), fix))
    return out


def _scaling(scaling) -> dict:
    scaling = dict(scaling or {})
    if "type" in scaling:  # the older spelling of rope_type
        scaling.setdefault("rope_type", scaling.pop("type"))
    return scaling


def _synonym_misread(raw: dict, config, carried: set, unread: set) -> list[_Misread]:
    out = []
    for group in SYNONYMS:
        used_field = next((f for f in group if f in carried), None)
        if used_field is None:
            continue
        used = getattr(config, used_field)
        for field in group:
            if field in raw and field in unread and not _same(raw[field], used):
                out.append(_Misread(field, raw[field], used_field, used, (used_field, raw[field])))
    return out


def _hard_coded_misread(raw: dict, unread: set) -> list[_Misread]:
    fixed = HARD_CODED.get(raw.get("model_type", ""), {})
    return [
        _Misread(field, raw[field], f"{field} (hard-coded)", value, None)
        for field, value in fixed.items()
        if field in raw and field in unread and not _same(raw[field], value)
    ]


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _show(value) -> str:
    return json.dumps(value) if value is not None else "unset"
