"""A paper cost model of the MoE prefill on Cloud AI 100, and the chunk size ``auto`` picks from it.

No device was available to this project: every figure here is predicted, none is measured.

Model, per MoE layer: the expert FLOPs the static graph executes run at the device's fp16 peak, and every
expert weight set the graph reads streams from DRAM at its bandwidth (an MoE layer's experts, 1.2 GB for
Qwen3-30B-A3B in fp16, do not fit the 126-144 MB of on-chip SRAM). The two add up:

    time = rows * 2*W / (peak * min(N, 16)/16)  +  loads * W * bytes_per_weight / bandwidth

with W the weight elements of one expert (3*H*I), rows and loads from ``dispatch.expert_work`` and N the cores
the program is compiled for. W scales both terms alike, so the best chunk size depends on T, E, k, N and the
device only: with fp16 weights one weight load costs as long as ``peak / bandwidth`` (~900 on AI 100 Pro) rows of
compute, and the prefill is bound by weight loads unless a tile has that many rows.

Device figures (one SoC; the Ultra card carries four): Qualcomm Cloud AI SDK documentation, "Architecture",
table "Cloud AI Platforms" (https://quic.github.io/cloud-ai-sdk-pages/latest/Getting-Started/Architecture):

    SKU              FP16 peak     DDR bandwidth   SoCs
    AI 100 Standard  110 TFLOPs    137 GB/s        1
    AI 100 Pro       125 TFLOPs    137 GB/s        1
    AI 100 Ultra     290 TFLOPs    548 GB/s        4
"""

from __future__ import annotations

from dataclasses import dataclass

from .dispatch import expert_work

SOURCE = "https://quic.github.io/cloud-ai-sdk-pages/latest/Getting-Started/Architecture"


@dataclass(frozen=True)
class Device:
    """One Cloud AI 100 SoC: 16 AI cores sharing one DRAM."""

    name: str
    fp16_flops: float  # FLOP/s, all 16 cores
    dram_bytes_per_s: float
    cores: int = 16


DEVICES = {
    "ai100-standard": Device("Cloud AI 100 Standard", 110e12, 137e9),
    "ai100-pro": Device("Cloud AI 100 Pro", 125e12, 137e9),
    "ai100-ultra": Device("Cloud AI 100 Ultra, one of its 4 SoCs", 290e12 / 4, 548e9 / 4),
}
DEFAULT_DEVICE = DEVICES["ai100-pro"]
FP16_BYTES = 2
# -mxfp6-matmul: 6-bit elements plus one 8-bit scale per 32 (the OCP Microscaling block layout), if the compiler
# stores weights that way; not documented to us.
MXFP6_BYTES = (32 * 6 + 8) / 8 / 32

# `auto` keeps both of these when some chunk size can (see choose_chunk_size).
MAX_FLOPS_OVER_IDEAL = 2.0
REFERENCE_BLOCKED_CHUNK = 256  # the blocked path's default chunk: auto loads no more weight sets than it


@dataclass(frozen=True)
class Prediction:
    rows: int  # expert-MLP rows executed
    loads: int  # expert weight sets read
    compute_s: float
    dram_s: float

    @property
    def seconds(self) -> float:
        return self.compute_s + self.dram_s


def predict(
    dispatch: str,
    num_tokens: int,
    top_k: int,
    num_experts: int,
    num_cores: int,
    chunk_size: int,
    expert_weights: int = 1,
    device: Device = DEFAULT_DEVICE,
    bytes_per_weight: float = FP16_BYTES,
) -> Prediction:
    """Predicted expert time of one MoE layer. ``expert_weights``: weight elements of one expert (3*H*I); the
    default 1 gives times per weight element, enough to compare chunk sizes."""
    rows, loads = expert_work(dispatch, num_tokens, top_k, num_experts, num_cores, chunk_size)
    peak = device.fp16_flops * min(num_cores, device.cores) / device.cores
    return Prediction(
        rows,
        loads,
        rows * 2 * expert_weights / peak,
        loads * expert_weights * bytes_per_weight / device.dram_bytes_per_s,
    )


def choose_chunk_size(
    dispatch: str,
    num_tokens: int,
    top_k: int,
    num_experts: int,
    num_cores: int,
    device: Device = DEFAULT_DEVICE,
    bytes_per_weight: float = FP16_BYTES,
) -> int:
    """The chunk (blocked) or tile (grouped) size C that ``--moe-prefill-packed-chunk-size auto`` exports.

    Among C in 1..T, take the fastest by ``predict`` among those that execute at most 2x the ideal expert
    FLOPs and load no more expert weight sets than the blocked path at C=256; when no C keeps both (short
    prompts: a single pass over the experts then costs E/k x the FLOPs), the fastest outright. Ties go to the
    smaller C. The guards hedge the model's least certain term: it charges every tile a full weight load from
    DRAM, while FLOPs are certain.

    For ``blocked`` the answer is C = T: its FLOPs are E*T rows whatever C is, and every extra chunk reloads the
    weights of every slot.
    """
    ideal_rows = num_tokens * top_k
    _, reference_loads = expert_work("blocked", num_tokens, top_k, num_experts, num_cores, REFERENCE_BLOCKED_CHUNK)
    options = []  # (guards broken, seconds, C)
    for chunk in range(1, num_tokens + 1):
        p = predict(dispatch, num_tokens, top_k, num_experts, num_cores, chunk, 1, device, bytes_per_weight)
        guarded = p.rows <= MAX_FLOPS_OVER_IDEAL * ideal_rows and p.loads <= reference_loads
        options.append((not guarded, p.seconds, chunk))
    any_guarded = any(not broken for broken, _, _ in options)
    return min((s, c) for broken, s, c in options if not (any_guarded and broken))[1]
