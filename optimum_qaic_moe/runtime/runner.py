"""Run an export as a causal LM: chunked prefill and decode, with the KV cache kept between calls.

``CausalLMRunner(export_dir, device)`` is the whole API: ``prefill`` (left-padded prompts, run as chunks of the
prefill graph) and ``decode`` (one token per row). Where the KV cache lives depends on the backend:

- ``device="cpu"``: ``HostKVCache``. onnxruntime runs the ONNX graphs; the cache is a host array (float32) fed
  to every call and replaced by the ``*_RetainedState`` outputs.
- ``device="qaic"``: ``DeviceKVCache``. Each compiled program keeps its cache on the card as retained state:
  the host sends token ids and positions and reads logits, nothing else. Prefill and decode are two programs,
  so the cache is read out of the prefill program after a prompt's last chunk and written into the decode
  program before its first step: once per request, never per token, in the program's own I/O dtype (float16).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..settings import UserError

if TYPE_CHECKING:
    from .ort import OrtGraph

RETAINED = "_RetainedState"
DeviceIds = None | Sequence[int] | Mapping[str, Sequence[int]]


def read_export_meta(export_dir: str) -> dict:
    with open(os.path.join(export_dir, "qaic_config.json")) as f:
        return json.load(f)


def cache_shapes(onnx_path: str, batch_size: int, ctx_len: int, window: int | None) -> dict[str, tuple]:
    """The KV cache inputs' shapes of a graph, its symbolic dims bound for one batch size and context length (as
    specializations.json binds them for the compiler)."""
    import onnx

    bind = {"batch_size": batch_size, "ctx_len": ctx_len, "sliding_window": min(window or ctx_len, ctx_len)}
    graph = onnx.load(onnx_path, load_external_data=False).graph
    shapes = {}
    for value in graph.input:
        if value.name.startswith("past_"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else bind[d.dim_param] for d in dims)
    return shapes


def export_ctx_lens(meta: dict) -> list[int]:
    ctx = meta.get("ctx_lens") or meta["settings"]["ctx_len"]
    return sorted(ctx) if isinstance(ctx, list) else [ctx]


class HostKVCache:
    """onnxruntime graphs; the cache is on the host and crosses into every call (CPU memory, so it is free)."""

    def __init__(
        self,
        export_dir: str,
        meta: dict,
        low_memory: bool = False,
        ctx_len: int | None = None,
        graph_files: dict[str, str] | None = None,
    ):
        """``low_memory``: load a graph when first used and drop the other, without onnxruntime's graph
        optimizations, so about one copy of the weights is in memory (for a one-off check such as the export's
        verification; generation switches graphs every call and wants them all loaded and optimized).
        ``ctx_len``: which of the exported context lengths to run (default: the largest). ``graph_files``: ONNX
        files to run instead of the export's (the verification's fp16-emulating copies)."""
        self.export_dir, self.meta, self.low_memory = export_dir, meta, low_memory
        self.graph_names = list(meta["graphs"])
        self.graph_files = {g: os.path.join(export_dir, f"{g}.onnx") for g in self.graph_names}
        self.graph_files.update(graph_files or {})
        s = meta["settings"]
        self.batch_size, self.prefill_seq_len = s["batch_size"], s["prefill_seq_len"]
        ctx_lens = export_ctx_lens(meta)
        if ctx_len is not None and ctx_len not in ctx_lens:
            raise UserError(f"the export serves context lengths {ctx_lens}, not {ctx_len}")
        self.ctx_len = ctx_len or max(ctx_lens)
        self.cache_shapes = cache_shapes(
            self.graph_files[self.graph_names[0]], self.batch_size, self.ctx_len, meta.get("sliding_window")
        )
        self._loaded: dict[str, OrtGraph] = {}
        if not low_memory:
            for name in self.graph_names:
                self._graph(name)
        self.cache: dict[str, np.ndarray] = {}

    def _graph(self, name: str) -> OrtGraph:
        from .ort import OrtGraph

        if name not in self._loaded:
            if self.low_memory:
                self._loaded.clear()
            self._loaded[name] = OrtGraph(self.graph_files[name], optimize=not self.low_memory)
        return self._loaded[name]

    def close(self) -> None:
        self._loaded.clear()

    def start(self) -> None:
        self.cache = {name: np.zeros(shape, dtype=np.float32) for name, shape in self.cache_shapes.items()}

    def run(self, graph: str, input_ids: np.ndarray, position_ids: np.ndarray, ends_prompt: bool = False):
        out = self._graph(graph).run({"input_ids": input_ids, "position_ids": position_ids, **self.cache})
        for name in self.cache:
            if name + RETAINED in out:
                self.cache[name] = out[name + RETAINED]
        return out["logits"][:, -1, :]  # [B, V]


def _device_ids_for(graph: str, device_ids: DeviceIds, num_devices: int) -> list[int] | None:
    """The device group of one program: ``device_ids`` is None (the runtime picks), one list for every
    program, or {graph name: list}."""
    ids = device_ids.get(graph) if isinstance(device_ids, Mapping) else device_ids
    if ids is None:
        return list(range(num_devices)) if num_devices > 1 else None
    ids = [ids] if isinstance(ids, int) else list(ids)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise UserError(f"device_ids for the {graph} program must be non-negative integers, got {ids!r}")
    if num_devices > 1 and len(ids) != num_devices:
        raise UserError(
            f"the {graph} program was compiled for {num_devices} devices (--num-devices "
            f"{num_devices}): give {num_devices} device ids, got {ids}"
        )
    return ids


class DeviceKVCache:
    """Compiled programs on Cloud AI 100 cards; each keeps its KV cache on the card as retained state."""

    def __init__(
        self, export_dir: str, meta: dict, device_ids: DeviceIds = None, data_path_timeout_ms: int | None = None
    ):
        from .qaic import DEFAULT_DATA_PATH_TIMEOUT_MS, QAICSession

        self.graph_names = list(meta["graphs"])
        if isinstance(device_ids, Mapping) and set(device_ids) - set(self.graph_names):
            unknown = ", ".join(sorted(set(device_ids) - set(self.graph_names)))
            raise UserError(f"device_ids names {unknown}, but this export has only {', '.join(self.graph_names)}")
        num_devices = int(meta["settings"].get("num_devices", 1))
        timeout = data_path_timeout_ms or DEFAULT_DATA_PATH_TIMEOUT_MS
        self.sessions: dict[str, QAICSession] = {}
        for graph in self.graph_names:
            ids = _device_ids_for(graph, device_ids, num_devices)
            self.sessions[graph] = QAICSession(os.path.join(export_dir, graph, "qpc"), ids, timeout)
        self.spec = self._select_specializations()
        first = self.spec[self.graph_names[0]]
        self.batch_size, self.ctx_len = first["input_ids"][0], self._ctx_len(self.graph_names[0], first)
        prefill = self.spec.get("prefill")
        self.prefill_seq_len = prefill["input_ids"][1] if prefill else meta["settings"]["prefill_seq_len"]
        self.request = 0
        self._resident: dict[str, int] = {}  # graph -> the request whose cache that program holds
        # (source graph, {past_* name: host array}) waiting for the other program
        self._handoff: tuple[str, dict[str, np.ndarray]] | None = None

    def _ctx_len(self, graph: str, spec: dict) -> int:
        """The context of a specialization: the longest cache (GPT-OSS ring layers are shorter)."""
        return max(spec[name][2] for name in self.sessions[graph].kv_input_names())

    def _select_specializations(self) -> dict[str, dict]:
        """One specialization per program: the largest (context, batch) every program was compiled for; the
        prefill program's longest chunk and the decode program's shortest step within it."""
        options: dict[str, dict[tuple[int, int], list[dict]]] = {}  # graph -> (context, batch) -> its specializations
        for graph, session in self.sessions.items():
            options[graph] = {(self._ctx_len(graph, s), s["input_ids"][0]): [] for s in session.specializations}
            for s in session.specializations:
                options[graph][(self._ctx_len(graph, s), s["input_ids"][0])].append(s)
        common = set.intersection(*(set(keys) for keys in options.values()))
        if not common:
            found = "; ".join(f"{g}: {sorted(k)}" for g, k in options.items())
            raise UserError(
                f"the compiled programs share no (context length, batch size): {found}; compile all "
                "graphs of one export together"
            )
        best = max(common)
        pick = {"prefill": max, "decode": min}
        return {g: pick.get(g, max)(options[g][best], key=lambda s: s["input_ids"][1]) for g in self.sessions}

    def start(self) -> None:
        self.request += 1
        self._handoff = None

    def _bind_cache_inputs(self, graph: str) -> None:
        session, spec = self.sessions[graph], self.spec[graph]
        names = session.kv_input_names()
        if self._resident.get(graph) == self.request:
            session.skip_buffers(names)  # this request's cache is already on this program
        elif self._handoff is not None and self._handoff[0] != graph:
            session.set_buffers(self._handoff[1])  # the other program's cache for this request, once
            self._handoff = None
        elif graph in self._resident:
            # A new request on a program that holds an older one: its slots are invalid for the new positions
            # (the graphs mask every slot whose position is not below the chunk's first), so leave it there.
            session.skip_buffers(names)
        else:  # first use of this program: start from zeros, at the chosen specialization's shape
            session.set_buffers({n: np.zeros(spec[n], session.dtype[n]) for n in names})
        self._resident[graph] = self.request

    def run(self, graph: str, input_ids: np.ndarray, position_ids: np.ndarray, ends_prompt: bool = False):
        """``ends_prompt``: the prompt's last prefill chunk; the cache is read out when another program will
        continue the request."""
        session, spec = self.sessions[graph], self.spec[graph]
        self._bind_cache_inputs(graph)
        outputs = session.kv_output_names()
        hand_over = ends_prompt and len(self.sessions) > 1
        if hand_over:
            session.set_buffers({n: np.empty(spec[n], session.dtype[n]) for n in outputs})
        else:
            session.skip_buffers(outputs)
        session.set_buffers({"logits": np.empty(spec["logits"], session.dtype["logits"])})
        out = session.run({"input_ids": input_ids, "position_ids": position_ids})
        if hand_over:
            self._handoff = (graph, {n[: -len(RETAINED)]: out[n] for n in outputs})
        return out["logits"][:, -1, :].astype(np.float32)  # [B, V]

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


class CausalLMRunner:
    """Holds the graphs of one export and the KV cache of one batch.

    ``prefill`` takes left-padded prompts and runs them as successive chunks of the prefill graph (the last chunk
    padded with position -1); ``decode`` feeds one token per row. Without a decode graph, decode steps run on the
    prefill graph (one valid token, the rest padding); without a prefill graph, prompts run token by token.
    ``device_ids`` and ``data_path_timeout_ms`` apply to ``device="qaic"`` (see ``DeviceKVCache``).
    """

    def __init__(
        self,
        export_dir: str,
        device: str = "cpu",
        low_memory: bool = False,
        device_ids: DeviceIds = None,
        data_path_timeout_ms: int | None = None,
        ctx_len: int | None = None,
        graph_files: dict[str, str] | None = None,
    ):
        self.meta = read_export_meta(export_dir)
        if device not in ("cpu", "qaic"):
            raise UserError(f"unknown device {device!r}: use 'cpu' (onnxruntime) or 'qaic'")
        self.kv: HostKVCache | DeviceKVCache
        if device == "cpu":
            if device_ids is not None:
                raise UserError("device_ids applies to device='qaic' only")
            self.kv = HostKVCache(export_dir, self.meta, low_memory, ctx_len, graph_files)
        else:
            self.kv = DeviceKVCache(export_dir, self.meta, device_ids, data_path_timeout_ms)
        self.export_dir, self.device = export_dir, device
        self.graph_names = self.kv.graph_names
        self.batch_size, self.prefill_seq_len, self.ctx_len = (
            self.kv.batch_size,
            self.kv.prefill_seq_len,
            self.kv.ctx_len,
        )
        self.pad_token_id = self.meta.get("pad_token_id") or 0

    @property
    def cache(self):
        """The current request's KV cache, to switch between requests: ``QAICModelForCausalLM`` runs a batch
        larger than the exported one as several groups this way. On the host it is the arrays themselves; on the
        card it stays on the card, and only the current request can continue."""
        if isinstance(self.kv, HostKVCache):
            return self.kv.cache
        return ("on the card", self.kv.request)

    @cache.setter
    def cache(self, value) -> None:
        if isinstance(self.kv, HostKVCache):
            self.kv.cache = value
        elif value != ("on the card", self.kv.request):
            raise UserError(
                "on device='qaic' the KV cache stays on the card, so one group of prompts runs at a "
                f"time: export with --batch-size covering all rows (now {self.batch_size})"
            )

    def reset(self) -> None:
        """Start a new request (the next prefill does this itself)."""
        self.kv.start()

    def close(self) -> None:
        """Release the graphs (on the card: deactivate the programs). The runner cannot run afterwards."""
        self.kv.close()

    def _run(self, graph: str, input_ids: np.ndarray, position_ids: np.ndarray, ends_prompt: bool = False):
        if int(position_ids.max()) >= self.ctx_len:
            raise UserError(
                f"position {int(position_ids.max())} does not fit the context of {self.ctx_len} "
                "tokens: export with a larger --ctx-len or generate fewer tokens"
            )
        return self.kv.run(graph, input_ids.astype(np.int64), position_ids.astype(np.int64), ends_prompt)

    def _check_batch(self, n: int) -> None:
        if n != self.batch_size:
            raise UserError(
                f"the graphs were exported for batch size {self.batch_size}, got {n} prompts: "
                f"export with --batch-size {n}"
            )

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Left-padded prompts [B, n] -> logits at each row's last token [B, V]. Starts a new request."""
        input_ids = np.asarray(input_ids)
        self._check_batch(input_ids.shape[0])
        if input_ids.shape[1] == 0:  # no chunk would run, so there would be no logits to return
            raise UserError("empty prompt: input_ids has no tokens; give at least one token per row")
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
        positions = np.where(mask > 0, np.cumsum(mask, axis=1) - 1, -1)
        self.reset()
        if "prefill" in self.graph_names:
            graph, width = "prefill", self.prefill_seq_len
        else:
            graph, width = "decode", 1
        n = input_ids.shape[1]
        chunks = -(-n // width)
        pad = chunks * width - n
        ids = np.pad(input_ids, ((0, 0), (0, pad)), constant_values=self.pad_token_id)
        pos = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
        logits = None
        for c in range(chunks):
            cols = slice(c * width, (c + 1) * width)
            step = self._run(graph, ids[:, cols], pos[:, cols], ends_prompt=c == chunks - 1)
            has_token = np.any(pos[:, cols] >= 0, axis=1)  # [B]
            logits = step if logits is None else np.where(has_token[:, None], step, logits)
        assert logits is not None  # the prompt is not empty: at least one chunk ran
        return logits

    def decode(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One token per row [B] at positions [B] -> logits [B, V]."""
        tokens = np.asarray(tokens).reshape(-1, 1)
        positions = np.asarray(positions).reshape(-1, 1)
        self._check_batch(tokens.shape[0])
        if "decode" in self.graph_names:
            return self._run("decode", tokens, positions)
        width = self.prefill_seq_len
        ids = np.pad(tokens, ((0, 0), (0, width - 1)), constant_values=self.pad_token_id)
        pos = np.pad(positions, ((0, 0), (0, width - 1)), constant_values=-1)
        return self._run("prefill", ids, pos)
