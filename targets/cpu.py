"""``--target cpu``: IREE llvm-cpu for this host, run with the ``local-task`` driver
(a worker pool) or, for small models, ``local-sync`` (the caller's thread)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from optc.api import Artifact, Session, Target, option
from optc.builder import defining_op, fill_value, indexing_maps, is_zero_fill
from optc.errors import CompileError
from optc.hookspecs import hookimpl
from optc.program import Program, apply_view, reassociation, shape_of, walk_nested

from optc.targets.iree_common import IreeSession, compile_program

# Measured, not guessed: eager ÷ IREE latency at batch 1, 2 threads, one process,
# interleaved with rotation and passive OpenMP (benchmarks/cpu_flags.py,
# 2026-11-23, this 2-core machine):
#                                  resnet18  mobilenetv2  lstm  bert
#   im2col + data tiling + O3        1.02       1.08      1.05  1.15
#   + aggressive fusion              1.04       1.06      1.11  1.17
#   + ukernels + aggressive fusion   0.95       1.13      1.13  1.12
#   + channels-last (all: default)   0.96       1.09      0.98  1.11
# The rows differ by less than the run-to-run noise (about ±0.1). Without
# im2col ResNet-18 ran ~10x slower than eager (DESIGN.md). An earlier sweep that
# timed in a fixed order (eager first) made the row after eager look 20-40%
# slower: that was PyTorch's spinning OpenMP workers, not the flags.
# Aggressive fusion (on at O2/O3 unless turned off) makes valid modules fail in
# IREE 3.13: a tensor returned beside its softmax ("'vector.store' op write
# affecting operations on global resources ...", on IREE's linalg.softmax, which
# softmax_exp_once() now keeps softmax from becoming) and a rank-1 low-rank MLP
# ("exceeded stack allocation limit"); its gain above was within the noise, so
# the fast set turns it off explicitly. Should the fast set still fail on some
# module, compile() retries with the safe set and the report says so.
#
# Winograd (winograd_as_linalg()): 3x3 stride-1 convs with at least
# WINOGRAD_MIN_CHANNELS inputs and WINOGRAD_MIN_OUT_CHANNELS outputs whose
# output is at least WINOGRAD_MIN_OUTPUT on each side, written as linalg ops:
# F(6x6, 3x3) (8x8 tiles) from WINOGRAD_F6_MIN_OUTPUT up, F(4x4, 3x3) (6x6
# tiles) below it, where 6x6 output tiles would pad 14x14 to 18x18. Smaller
# outputs stay on im2col: at 7x7 the transformed filters are 4x (F(4x4)) the
# 3x3 ones and the 512-channel layers are weight-bound at batch 1.
# IREE 3.13's own Winograd pass (iree-linalg-ext-convert-conv2d-to-winograd,
# used until 2026-12-05) tiles its input transform one (tile, channel) pair at
# a time: 0.87 ms per launch on ResNet-18's 1x64x56x56 layer input, while the
# two separable tap sums here take 0.08 ms each (benchmarks/profile_dispatches.py,
# 2 threads). ResNet-18-shaped dense, iree-benchmark-module median: IREE's pass
# 26.8 ms, these ops at >= 28x28 23.8, and with F(4x4) at 14x14 23.0 (one
# profile run each, 2026-12-05).
_PREPROCESSING = "builtin.module(util.func(iree-preprocessing-convert-conv-to-channels-last))"
FAST_FLAGS = (
    "--iree-global-opt-use-im2col-for-convs",
    "--iree-opt-data-tiling",
    "--iree-opt-level=O3",
    "--iree-llvmcpu-enable-ukernels=all",
    "--iree-dispatch-creation-enable-aggressive-fusion=false",
    f"--iree-preprocessing-pass-pipeline={_PREPROCESSING}",
    # lets a collapse_shape move past an expand_shape: at batch 32 bcr's
    # windowed scatter (…, window, lane) on the BERT-shaped encoder kept its
    # bias and ReLU in a 4096x1024 dispatch of their own without it. bcr BERT
    # batch 32 1.10-1.15x, batch 1 within noise; dense BERT, LSTM, ResNet-18,
    # MobileNetV2 1.00-1.05x (compare_artifacts.py, cpu_flags.py, 2026-12-05)
    "--iree-dispatch-creation-propagate-collapse-across-expands",
)
# The transformed filters (8x8 or 6x6 per 3x3 kernel: 7.1x or 4x) are past
# IREE's default size limit for hoisting constant expressions: without this
# flag they were re-transformed and re-packed on every call (57% + 23% of
# ResNet-18's dispatch time, measured with IREE's pass). Hoisted, const-eval
# computes them once at compile time. Added only when some conv is rewritten.
HOIST_WINOGRAD_FILTERS = "--iree-opt-const-expr-max-size-increase-threshold=1000000000000"
# IREE's transpose propagation folds the head split and merge around attention
# into its batch matmuls, whose batch dims then are not outermost: P·V of the
# BERT-shaped encoder at batch 32 became matmul_like_128x32x4x64x128 at 11.6 ms
# a launch, 2.7 ms as a batch matmul (profile_dispatches.py, 2 threads). With
# distinct weights per layer (/tmp model, cpu_flags.py, 2026-12-05) batch 32 ran
# 208.6 -> 172.5 ms without propagation and batch 1 5.77 -> 5.98 (noise);
# programs without attention kept it: ResNet-18 22.89 / 23.13 ms, MobileNetV2
# 8.39 / 8.52, LSTM 4.85 / 5.03 (with / without). So it is off only for
# programs with attention (see attention_matmuls()).
NO_TRANSPOSE_PROPAGATION = "--iree-global-opt-propagate-transposes=false"
WINOGRAD_MIN_OUTPUT = 14
WINOGRAD_F6_MIN_OUTPUT = 28
# Winograd saves multiplications in its IC x OC product per tile point, while
# its input and output transforms cost the same whatever IC and OC are: with
# few channels the transforms are the whole cost. With IREE's pass, penni's
# basis conv (1 input channel) lost 27% of ResNet-18 penni's time to the
# transforms, and examples.models:cnn (stem 3 -> 16) and the multi-scale
# digits CNN (16 -> 32 at 32x32) ran 1.18-1.35x and 1.24-1.26x slower
# (iree-benchmark-module, both drivers, 2026-12-04); ResNet-18's 64-channel
# convs gained. With the transforms here (iree-benchmark-module medians,
# 2 threads, 2026-12-05): a held-out ResNet-like CNN with a 48-channel stage
# at 80x80 ran 35.4 ms with a minimum of 64 input channels, 32.2 with 32, 33.9
# with 16; the multi-scale digits CNN 0.309 / 0.324 / 0.356 ms (its 32 -> 32
# conv at 16x16 loses a little). Outputs may be fewer: lowrank's first conv of
# a 3x3 layer (64 -> 28 at 56x56, 128 -> 57 at 28x28) ran 20.9 ms on im2col
# and 19.1 on Winograd (ResNet-18-shaped, lowrank.reduction=2, IREE's pass).
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_OUT_CHANNELS = 16
# IREE's f32 data-tiling row tile on this AVX-512 host (mmt4d M0): see single_channel_convs_as_taps()
PACKED_ROWS = 16

# Matvecs: a matmul of one row against a weight (an RNN step at batch 1, a
# classifier head). IREE 3.13's data tiling gives an f32 M=1 matmul 1x16 tiles
# on AVX-512 (enumerateMatmulTileX86_64): one chain of dependent FMAs per 16
# outputs, bound by FMA latency. matvecs_as_panels() writes it as a generic over
# weight panels of MATVEC_LANES outputs (MATVEC_LANES / 16 accumulators) with
# its own lowering config. A 2-layer LSTM (hidden 256, 50 steps, weights in L2),
# iree-benchmark-module median, local-sync: 2.1 ms -> 1.04-1.10 ms (the 1024x256
# matvec 21 -> 7.0-7.3 us); 64 lanes 1.14 ms, 32 lanes 1.18 ms; the reference LSTM
# (hidden 512: 4 MB per layer, past one core's L2) 10.4 -> 10.3 ms, bound by
# memory either way (2026-12-05).
MATVEC_LANES = (128, 64, 32, 16)  # widest that divides the outputs
MATVEC_K_UNROLL = 8
MATVEC_PANELS_PER_WORKGROUP = 2  # 2 or 4 measured the same on both drivers

# Attention's batch matmuls (Q·Kᵀ, P·V: both operands computed). IREE 3.13's
# data tiling packs both operands of each (an encode per operand per call) and
# runs the batch mmt4d at 53 GMAC/s: BERT-shaped 4x128x128x64 79 us plus 12 us
# of encodes, 4x128x64x128 70 + 17 us. With their own lowering config they skip
# data tiling: 8x32 register tiles (16 accumulators) in workgroups of 64 x 128
# ran 41 us and 38-41 us (102 GMAC/s); IREE's non-data-tiled default (8x16
# tiles, 64x64) 57 us, 4x64 tiles 43-48, 16x32 or 12x32 62-174 (2 threads,
# iree-benchmark-module profiles of the lone op, 2026-12-05).
ATTENTION_TILE_ROWS = 8
ATTENTION_TILE_LANES = (32, 16)  # widest that divides the outputs
ATTENTION_WORKGROUP = (64, 128)

# SOFTMAX_EXP_ONCE: torch-mlir writes softmax as five generics (max, x - max,
# exp, sum, divide), which IREE 3.13 raises to linalg.softmax, whose dispatch
# computes each exp twice: 43.5 us on BERT-shaped 4x128x128 scores. With x - max
# and exp as one generic IREE leaves it alone: a max + exp dispatch and a sum +
# divide one, 34.7 us. scaled_dot_product_attention's _safe_softmax also checks
# whether a row is all -inf (zeros there, not NaN) with an i1 AND-reduction of
# x == -inf: 29.4 us of its own. The row max is -inf exactly then (maximumf
# propagates NaN, and NaN is not -inf), so comparing it instead leaves 35.7 us
# for the whole softmax against 72.9 (softmax_exp_once(); iree-benchmark-module
# profiles of the block cut from the BERT-shaped model, 2 threads, 2026-12-05).

# Driver: IREE's local-task pool hands each call to its worker threads and
# wakes the caller when they finish, about 0.08 ms per hand-off on this 2-core
# machine (a one-dispatch call: 0.08 ms on local-task, 0.002 ms on local-sync),
# and a module that reads a value back mid-call (drnet's choice) pays it
# twice. Small models run faster on local-sync, inline on the caller's thread
# (median ms, iree-benchmark-module, local-sync / local-task 2 workers,
# 2026-12-04): digits LSTM 0.033 / 0.129, examples.models:transformer 0.020 /
# 0.101, digits CNN 0.189 / 0.341, multi-scale digits CNN 0.32 / 0.38 (8.4 M
# MACs), examples.models:transformer at batch 32 0.565 / 0.481 (17.8 M),
# digits CNN at batch 4 2.04 / 1.21 (29 M), reference LSTM 10.2 / 5.37 (109 M),
# ResNet-18 51.0 / 31.3. Above the total, an unrolled RNN whose contractions are
# small on average is a chain of little dispatches (its per-step matvecs) that
# two workers cannot share well: a 2-layer LSTM (hidden 256, 50 steps, 103
# contractions) on local-sync / local-task is 2.15 / 3.12 at batch 1 (41 M MACs,
# 0.40 M per contraction), 2.65 / 3.13 at batch 2 (0.80 M), 3.46 / 3.74 at batch
# 4 (1.6 M: a miss), while the reference LSTM (hidden 512, 1.6 M per
# contraction, 4 MB recurrent weights that one core's L2 cannot hold) is 9.73 /
# 5.88 and BERT-shaped (17 M) 8.03 / 5.55 (2026-12-04). Only RNNs: MobileNetV2-
# shaped after lowrank reduction=4 (87 M MACs, 0.87 M per contraction) ran 19.3
# ms on local-sync against 14.6 for dense on local-task (benchmarks/reference_table.py).
SYNC_MAX_MACS = 16_000_000
SYNC_MAX_MEAN_MACS = 1_000_000
RNN_MIN_STEPS = 8
DRIVERS = ("auto", "local-task", "local-sync")

_CPU_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class CpuOptions:
    cpu: str = option("host", "LLVM CPU name to generate code for (host = this machine)")
    fast: bool = option(True, "use the measured fast flag set (im2col, Winograd for large 3x3 convs, data tiling, O3, ukernels, channels-last convs), depthwise convs, one-input-channel convs and max pools as elementwise ops over their taps, one-row matmuls against a weight as reductions over weight panels, attention's batch matmuls as generics with their own tiles, and softmax with one exp per element; falls back to the safe set if it fails")
    winograd: int = option(WINOGRAD_MIN_OUTPUT, f"with fast: Winograd for 3x3 stride-1 convs whose output is at least this many pixels on each side, F(6x6,3x3) from {WINOGRAD_F6_MIN_OUTPUT}, F(4x4,3x3) below (0 = never)")
    flags: tuple[str, ...] = option((), "extra IREE compiler flags, comma-separated (for experiments; see benchmarks/cpu_flags.py)")
    driver: str = option("auto", f"IREE runtime driver the artifact is run with: local-task (a pool of worker threads), local-sync (the calling thread), or auto: local-sync when one call of the model (its largest variant) does under {SYNC_MAX_MACS // 1_000_000} M MACs or it is an unrolled RNN whose contractions average under {SYNC_MAX_MEAN_MACS // 1_000_000} M MACs, else local-task; written into the artifact's metadata")

    def validate(self) -> None:
        if not _CPU_NAME.match(self.cpu):
            raise ValueError(f"cpu={self.cpu!r}: expected an LLVM CPU name such as host, x86-64-v3 or skylake")
        if self.winograd < 0:
            raise ValueError(f"winograd={self.winograd}: expected a minimum output size >= 1, or 0 for never")
        bad = [f for f in self.flags if not f.startswith("--")]
        if bad:
            raise ValueError(f"flags: {bad[0]!r} is not a compiler flag (flags start with --)")
        if self.driver not in DRIVERS:
            raise ValueError(f"driver={self.driver!r}: expected one of {', '.join(DRIVERS)}")


class CpuTarget(Target):
    name = "cpu"
    summary = "IREE llvm-cpu for the host CPU, runtime driver local-task (local-sync for small models)"
    Options = CpuOptions

    def flags(self, options: CpuOptions, winograd: bool = False, attention: bool = False) -> list[str]:
        """The iree-compile flags; ``winograd``: some conv is on Winograd;
        ``attention``: the program has attention's batch matmuls."""
        flags = [f"--iree-llvmcpu-target-cpu={options.cpu}"]
        if options.fast:
            flags += FAST_FLAGS
            if winograd:
                flags.append(HOIST_WINOGRAD_FILTERS)
            if attention and not any(f.startswith(NO_TRANSPOSE_PROPAGATION.split("=")[0]) for f in options.flags):
                flags.append(NO_TRANSPOSE_PROPAGATION)
        return flags + list(options.flags)

    def flags_for(self, program: Program, options: CpuOptions) -> list[str]:
        """The iree-compile flags compile() uses for ``program``."""
        winograd = options.fast and bool(winograd_convs(program, options.winograd))
        return self.flags(options, winograd=winograd, attention=attention_matmuls(program) > 0)

    def compile(self, program: Program, options: Any) -> Artifact:
        try:
            prepared = program
            if options.fast:
                prepared, _ = winograd_as_linalg(max_pools_as_taps(single_channel_convs_as_taps(depthwise_as_taps(program))), options.winograd)
                prepared = configured_contractions(softmax_exp_once(prepared))  # last: see configured_contractions()
            artifact = compile_program(prepared, self.name, "llvm-cpu", self.flags_for(program, options), options)
        except CompileError as fast_error:
            if not options.fast:
                raise
            artifact = compile_program(program, self.name, "llvm-cpu", self.flags(replace(options, fast=False)), options)
            artifact.flags_used = f"safe (fast set failed: {str(fast_error).removeprefix('IREE llvm-cpu compile failed: ')})"
            return artifact
        artifact.flags_used = "fast" if options.fast else "safe"
        return artifact

    def resolve_options(self, program: Program, options: Any) -> Any:
        """``driver=auto`` made concrete for ``program``: see auto_driver()."""
        if options.driver != "auto":
            return options
        return replace(options, driver=auto_driver(program))

    def open(self, artifact_vmfb: bytes, options: Any) -> Session:
        # an artifact compiled before the driver was recorded says "auto": the pool, as then
        return IreeSession(artifact_vmfb, "local-task" if options.driver == "auto" else options.driver)


def auto_driver(program: Program) -> str:
    """local-sync when the costliest function one call may run (the program, or
    its largest batch or resolution variant) does under SYNC_MAX_MACS, or is an
    unrolled RNN (a weight read by RNN_MIN_STEPS or more contractions) whose
    contractions average under SYNC_MAX_MEAN_MACS; else local-task."""
    p = program.largest_variant()
    macs = p.contraction_sizes()
    if sum(macs) < SYNC_MAX_MACS:
        return "local-sync"
    steps = max((len(layer.uses) for layer in p.layers()), default=1)
    small_steps = steps >= RNN_MIN_STEPS and sum(macs) < SYNC_MAX_MEAN_MACS * len(macs)
    return "local-sync" if small_steps else "local-task"


def attention_matmuls(program: Program) -> int:
    """Batch matmuls (in any function) whose two operands are both computed, not
    weights: attention's Q·Kᵀ and P·V."""
    return sum(1 for op in walk_nested(program.module.operation) if _is_attention_matmul(program, op))


def _is_attention_matmul(program: Program, op: Any) -> bool:
    return op.name == "linalg.batch_matmul" and all(program.trace_param(v) is None for v in op.operands[:2])


def winograd_convs(program: Program, min_output: int) -> list[Any]:
    """The 3x3 stride-1 dilation-1 NCHW convs (in any function of the module)
    whose output is at least ``min_output`` on each side and that have at least
    WINOGRAD_MIN_CHANNELS input and WINOGRAD_MIN_OUT_CHANNELS output channels."""
    return [op for op in walk_nested(program.module.operation) if _on_winograd(op, min_output)]


def _on_winograd(op: Any, min_output: int) -> bool:
    if op.name != "linalg.conv_2d_nchw_fchw" or min_output <= 0:
        return False
    (out_ch, in_ch, *kernel_hw), out_hw = op.operands[1].type.shape, op.results[0].type.shape[2:]
    wide = in_ch >= WINOGRAD_MIN_CHANNELS and out_ch >= WINOGRAD_MIN_OUT_CHANNELS
    return kernel_hw == [3, 3] and _conv_geometry(op) == ([1, 1], [1, 1]) and min(out_hw) >= min_output and wide


# Y = Aᵀ·[(G·g·Gᵀ) ⊙ (Bᵀ·d·B)]·A per tile: F(6x6, 3x3) with the points IREE
# uses (Liu et al. 2021), and F(4x4, 3x3) (Lavin & Gray 2016). Output tile
# size -> (Bᵀ, G, Aᵀ).
_WINOGRAD = {
    6: (np.array([[1, 0, -21 / 4, 0, 21 / 4, 0, -1, 0], [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0], [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0],
                  [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0], [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0], [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
                  [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0], [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]]),
        np.array([[1, 0, 0], [-2 / 9, -2 / 9, -2 / 9], [-2 / 9, 2 / 9, -2 / 9], [1 / 90, 1 / 45, 2 / 45], [1 / 90, -1 / 45, 2 / 45],
                  [32 / 45, 16 / 45, 8 / 45], [32 / 45, -16 / 45, 8 / 45], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1 / 2, -1 / 2, 0], [0, 1, 1, 4, 4, 1 / 4, 1 / 4, 0],
                  [0, 1, -1, 8, -8, 1 / 8, -1 / 8, 0], [0, 1, 1, 16, 16, 1 / 16, 1 / 16, 0], [0, 1, -1, 32, -32, 1 / 32, -1 / 32, 1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
}


def winograd_as_linalg(program: Program, min_output: int) -> tuple[Program, int]:
    """A copy of ``program`` in which every winograd_convs() conv is Winograd's
    algorithm in linalg ops, and how many; ``program`` itself when there are
    none. Channels-last, with m×m output tiles (m = 6 from
    WINOGRAD_F6_MIN_OUTPUT, else 4) of t = m + 2 input pixels each:

        V[a, b, tile, c]  = Σ_i Bᵀ[a, i] Σ_j Bᵀ[b, j] d[tile + (i, j), c]   two tap sums (rows, then columns)
        U[a, b, c, o]     = Σ_k Σ_l G[a, k] G[b, l] w[o, c, k, l]           constant: IREE evaluates it at compile time
        M[a·t + b]        = V[a·t + b] @ U[a·t + b]                          one batch_matmul of t² products
        Y[tile + (p, q)]  = Σ_a Aᵀ[p, a] Σ_b Aᵀ[q, b] M[a, b, tile]          two tap sums, the second writing pixels in place

    The image is zero-padded below and right to whole tiles and the output
    cut back; the conv's initial value (torch's bias) is added at the end."""
    from torch_mlir import ir
    from torch_mlir.dialects import arith, tensor

    from optc.builder import Builder

    def rewrite(copy: Program, conv: Any) -> None:
        x, weight, init = conv.operands
        n, c, hp, wp = x.type.shape
        oc, (oh, ow) = weight.type.shape[0], init.type.shape[2:]
        m = 6 if min(oh, ow) >= WINOGRAD_F6_MIN_OUTPUT else 4
        t = m + 2
        bt, g, at = _WINOGRAD[m]
        th, tw = -(-oh // m), -(-ow // m)  # tiles down and across
        hq, wq = m * th + 2, m * tw + 2
        with Builder(copy, before=conv) as b:
            def dense(array: np.ndarray) -> ir.Value:
                array = np.ascontiguousarray(array, dtype=np.float32)
                return arith.ConstantOp(ir.RankedTensorType.get(list(array.shape), ir.F32Type.get()), ir.DenseElementsAttr.get(array)).result

            def taps(values: list[ir.Value], matrix: np.ndarray, image_map: str, kernel_map: str, shape: list[int]) -> ir.Value:
                return _sum_of_taps(b, values, [dense(matrix[:, k]) for k in range(matrix.shape[1])], image_map, kernel_map, b.zeros(shape, x))

            d = b.transpose(x, [0, 2, 3, 1])
            if (hq, wq) != (hp, wp):  # tensor.pad: an insert_slice here was mis-folded by IREE 3.13 into torch's own padding
                pad = tensor.PadOp(ir.RankedTensorType.get([n, hq, wq, c], ir.F32Type.get()), d, [], [], [0, 0, 0, 0], [0, hq - hp, wq - wp, 0])
                with ir.InsertionPoint(pad.regions[0].blocks.append(*[ir.IndexType.get()] * 4)):
                    tensor.YieldOp(arith.ConstantOp(ir.F32Type.get(), 0.0).result)
                d = pad.result
            rows = taps([b.slice(d, [0, i, 0, 0], [n, th, wq, c], [1, m, 1, 1]) for i in range(t)], bt,
                        "(a, n, h, w, c) -> (n, h, w, c)", "(a, n, h, w, c) -> (a)", [t, n, th, wq, c])
            v = taps([b.slice(rows, [0, 0, 0, j, 0], [t, n, th, tw, c], [1, 1, 1, m, 1]) for j in range(t)], bt,
                     "(a, e, n, h, w, c) -> (a, n, h, w, c)", "(a, e, n, h, w, c) -> (e)", [t, t, n, th, tw, c])
            gm = dense(g)
            u = b.generic([gm, gm, weight], b.zeros([t, t, c, oc], x),
                          ["(a, e, c, o, k, l) -> (a, k)", "(a, e, c, o, k, l) -> (e, l)", "(a, e, c, o, k, l) -> (o, c, k, l)", "(a, e, c, o, k, l) -> (a, e, c, o)"],
                          lambda ga, ge, w, acc: b.add(acc, b.mul(b.mul(ga, ge), w)), iterators=["parallel"] * 4 + ["reduction"] * 2)
            products = b.batch_matmul(b.collapse(v, [[0, 1], [2, 3, 4], [5]]), b.collapse(u, [[0, 1], [2], [3]]), b.zeros([t * t, n * th * tw, oc], x))
            products = b.expand(products, [[0, 1], [2, 3, 4], [5]], (t, t, n, th, tw, oc))
            by_a = [b.collapse(b.slice(products, [a, 0, 0, 0, 0, 0], [1, t, n, th, tw, oc]), [[0, 1], [2], [3], [4], [5]]) for a in range(t)]
            half = taps(by_a, at, "(p, e, n, h, w, o) -> (e, n, h, w, o)", "(p, e, n, h, w, o) -> (p)", [m, t, n, th, tw, oc])
            by_b = [b.collapse(b.slice(half, [0, e, 0, 0, 0, 0], [m, 1, n, th, tw, oc]), [[0, 1], [2], [3], [4], [5]]) for e in range(t)]
            tiles = taps(by_b, at, "(n, h, p, w, q, o) -> (p, n, h, w, o)", "(n, h, p, w, q, o) -> (q)", [n, th, m, tw, m, oc])
            y = b.slice(b.collapse(tiles, [[0], [1, 2], [3, 4], [5]]), [0, 0, 0, 0], [n, oh, ow, oc])
            out = b.generic([y, init], init, ["(n, o, h, w) -> (n, h, w, o)", "(n, o, h, w) -> (n, o, h, w)", "(n, o, h, w) -> (n, o, h, w)"],
                            lambda a, i, _: b.add(a, i))
        conv.results[0].replace_all_uses_with(out)
        conv.erase()

    return _rewrite_each(program, (lambda op: _on_winograd(op, min_output), rewrite)), len(winograd_convs(program, min_output))


def depthwise_as_taps(program: Program) -> Program:
    """A copy of ``program`` in which every NCHW depthwise conv is one elementwise
    ``linalg.generic`` over its KH·KW taps, channels-last: out = init + Σ
    x[.., oh·sh + i·dh, ow·sw + j·dw, c]·w[i, j, c], each tap a strided slice
    of the (padded) image and its own weight vector, between transposes that
    IREE folds into the neighbouring channels-last convs; ``program`` itself
    when it has none.

    IREE 3.13 runs the named op at about 1.6 GMAC/s: one 1×144×58×58 3×3
    depthwise conv took 2.56 ms (NHWC named op 5.28 ms), as NHWC taps
    0.239 ms (iree-benchmark-module, local-sync, fast flags, 2026-12-05).
    Weights indexed by a map with constant taps, (c, i, j), left the generic
    scalar (0.88–1.0 ms). MobileNetV2 went from 14.5 ms to 8.6 ms (``optc
    bench``, 2 threads)."""
    from optc.builder import Builder

    def rewrite(copy: Program, conv: Any) -> None:
        x, weight, init = conv.operands
        strides, dilations = _conv_geometry(conv)
        n, c, oh, ow = init.type.shape
        taps = _taps(weight.type.shape[1:])
        with Builder(copy, before=conv) as b:
            images = _nhwc_tap_slices(b, x, taps, strides, dilations, [n, oh, ow, c])
            wt = b.transpose(weight, [1, 2, 0])
            # one weight vector per tap: a map with constant indices (c, i, j) left IREE's generic scalar
            kernels = [b.collapse(b.slice(wt, [i, j, 0], [1, 1, c]), [[0, 1, 2]]) for i, j in taps]
            summed = _sum_of_taps(b, images, kernels, "(n, h, w, c) -> (n, h, w, c)", "(n, h, w, c) -> (c)", b.transpose(init, [0, 2, 3, 1]))
            out = b.transpose(summed, [0, 3, 1, 2])
        conv.results[0].replace_all_uses_with(out)
        conv.erase()

    return _rewrite_each(program, (lambda op: op.name == "linalg.depthwise_conv_2d_nchw_chw", rewrite))


def single_channel_convs_as_taps(program: Program) -> Program:
    """A copy of ``program`` in which every NCHW conv with one input channel and a
    KH×KW > 1 kernel (a bank of F filters over each image) is one elementwise
    ``linalg.generic`` over its taps, each tap a strided slice of the image
    and the F filters' weights at that tap; ``program`` itself when it has none.

    penni's basis stage is such a conv over the N·C channels of an image
    viewed as one-channel images, its F = nb maps per channel viewed back as
    N × C·nb channels. That form is recognized and computed on the image
    itself: channels-last, (n, oh, ow, c, b), the layout the following 1×1
    coefficient conv reads once IREE makes it channels-last; but NCHW, (n, c,
    b, oh, ow), when the output width is a multiple of PACKED_ROWS, where IREE
    3.13 fuses that matmul's operand packing into the channels-last taps and
    leaves the dispatch scalar (a held-out CNN's 80x80x48x4 taps: 1.1 ms per
    launch). penni.bases=4, iree-benchmark-module medians, 2 threads,
    2026-12-05: ResNet-18-shaped 25.3 ms with IREE's im2col conv, 15.0 ms with
    taps on the one-channel view, 13.0 on the image channels-last, 14.9 NCHW,
    12.7 as chosen here; the held-out CNN 23.1 channels-last, 19.5 NCHW, 18.9
    as chosen."""
    from optc.builder import Builder

    def one_channel(op: Any) -> bool:
        return op.name == "linalg.conv_2d_nchw_fchw" and op.operands[1].type.shape[1] == 1 and op.operands[1].type.shape[2] * op.operands[1].type.shape[3] > 1

    def rewrite(copy: Program, conv: Any) -> None:
        x, weight, init = conv.operands
        strides, dilations = _conv_geometry(conv)
        n, f, oh, ow = init.type.shape
        taps = _taps(weight.type.shape[2:])
        channels = _channels_as_images(conv) if is_zero_fill(init) else None
        with Builder(copy, before=conv) as b:
            wt = b.transpose(b.collapse(weight, [[0, 1], [2], [3]]), [1, 2, 0])
            kernels = [b.collapse(b.slice(wt, [i, j, 0], [1, 1, f]), [[0, 1, 2]]) for i, j in taps]
            if channels is None:
                image = b.collapse(x, [[0, 1], [2], [3]])
                images = [b.slice(image, [0, i * dilations[0], j * dilations[1]], [n, oh, ow], [1, *strides]) for i, j in taps]
                out = _sum_of_taps(b, images, kernels, "(n, f, h, w) -> (n, h, w)", "(n, f, h, w) -> (f)", init)
                conv.results[0].replace_all_uses_with(out)
                conv.erase()
                return
            image, maps = channels
            batch, c = image.type.shape[:2]
            if ow % PACKED_ROWS == 0:  # IREE fuses the matmul's operand packing into the taps, and leaves them scalar
                images = [b.slice(image, [0, 0, i * dilations[0], j * dilations[1]], [batch, c, oh, ow], [1, 1, *strides]) for i, j in taps]
                summed = _sum_of_taps(b, images, kernels, "(n, c, f, h, w) -> (n, c, h, w)", "(n, c, f, h, w) -> (f)", b.zeros([batch, c, f, oh, ow], image))
                out = b.collapse(summed, [[0], [1, 2], [3], [4]])
            else:
                images = _nhwc_tap_slices(b, image, taps, strides, dilations, [batch, oh, ow, c])
                summed = _sum_of_taps(b, images, kernels, "(n, h, w, c, f) -> (n, h, w, c)", "(n, h, w, c, f) -> (f)",
                                      b.zeros([batch, oh, ow, c, f], image))
                out = b.transpose(b.collapse(summed, [[0], [1], [2], [3, 4]]), [0, 3, 1, 2])
        flat = maps.operands[0].owner
        maps.results[0].replace_all_uses_with(out)
        for op in (maps, flat.operation, conv):
            op.erase()

    return _rewrite_each(program, (one_channel, rewrite))


def max_pools_as_taps(program: Program) -> Program:
    """A copy of ``program`` in which every NCHW max pool is one elementwise
    ``linalg.generic`` over its window, channels-last: out = max(init, max over
    the taps of x[.., oh·sh + i·dh, ow·sw + j·dw, c]), each tap a strided slice;
    ``program`` itself when it has none. IREE 3.13 ran ResNet-18's 3×3
    stride-2 pool of 1×64×112×112 as its named op in 0.88 ms, 7% of the
    penni-decomposed model (benchmarks/profile_dispatches.py, 2 threads)."""
    from torch_mlir.dialects import arith

    from optc.builder import Builder

    def rewrite(copy: Program, pool: Any) -> None:
        x, window, init = pool.operands
        strides, dilations = _conv_geometry(pool)
        n, c, oh, ow = init.type.shape
        taps = _taps(window.type.shape)
        with Builder(copy, before=pool) as b:
            images = _nhwc_tap_slices(b, x, taps, strides, dilations, [n, oh, ow, c])

            def body(*args: Any) -> Any:
                largest = args[-1]
                for tap in args[:-1]:
                    largest = arith.MaximumFOp(largest, tap).result
                return largest

            loops = "(n, h, w, c) -> (n, h, w, c)"
            largest = b.generic(images, b.transpose(init, [0, 2, 3, 1]), [loops] * (len(taps) + 1), body)
            out = b.transpose(largest, [0, 3, 1, 2])
        pool.results[0].replace_all_uses_with(out)
        pool.erase()

    return _rewrite_each(program, (lambda op: op.name == "linalg.pooling_nchw_max", rewrite))


def softmax_exp_once(program: Program) -> Program:
    """A copy of ``program`` in which each elementwise ``exp(x - m)`` written as
    two generics (torch-mlir's softmax) is one generic, and each check that a
    row is all ``-inf`` (PyTorch's _safe_softmax) compares that row's max with
    ``-inf`` instead of reducing ``x == -inf``: see SOFTMAX_EXP_ONCE.
    ``program`` itself when there is neither."""
    from torch_mlir.dialects import arith, math

    from optc.builder import Builder, element_type

    def fuse_exp(copy: Program, exp: Any) -> None:
        sub = defining_op(exp.operands[0])
        with Builder(copy, before=exp) as b:
            y = b.generic(list(sub.operands[:2]), exp.operands[1], [*_map_texts(sub)[:2], _map_texts(exp)[1]],
                          lambda x, m, _out: math.ExpOp(arith.SubFOp(x, m).result).result)
        _replace(exp, y)

    def read_max(copy: Program, check: Any) -> None:
        row_max, positions = _row_max_beside(check)
        out = check.results[0]
        dims = [f"d{i}" for i in range(len(shape_of(out)))]
        read = f"({', '.join(dims)}) -> ({', '.join(dims[p] for p in positions)})"
        with Builder(copy, before=check) as b:
            minus_inf = arith.ConstantOp(element_type(row_max), float("-inf")).result
            y = b.generic([row_max], check.operands[1], [read, f"({', '.join(dims)}) -> ({', '.join(dims)})"],
                          lambda m, _out: arith.CmpFOp(arith.CmpFPredicate.OEQ, m, minus_inf).result)
        _replace(check, y)

    return _rewrite_each(program, (_is_exp_of_difference, fuse_exp), (lambda op: _row_max_beside(op) is not None, read_max))


def _replace(op: Any, value: Any) -> None:
    """Replace ``op``'s result by ``value``; erase it and its operands' producers left unused
    (not Program.replace: its clean-up would erase ops other rules have picked)."""
    producers = [p for p in map(defining_op, op.operands) if p is not None]
    op.results[0].replace_all_uses_with(value)
    op.erase()
    for producer in producers:
        if all(not list(r.uses) for r in producer.results):
            producer.erase()


def _is_exp_of_difference(op: Any) -> bool:
    """``op`` is an elementwise exp of the one use of an elementwise ``a - b`` (all maps of the exp identities)."""
    if op.name != "linalg.generic" or len(op.operands) != 2 or _body(op) != ["math.exp(0)"] or not _all_parallel(op):
        return False
    sub = defining_op(op.operands[0])
    return (sub is not None and sub.name == "linalg.generic" and len(sub.operands) == 3 and _body(sub) == ["arith.subf(0,1)"]
            and _all_parallel(sub) and _one_use(sub.results[0]) and set(_map_texts(op)) == {_identity(op)} and _map_texts(sub)[2] == _identity(sub))


def _row_max_beside(check: Any) -> tuple[Any, list[int]] | None:
    """For ``check``, an AND-reduction from true of an elementwise ``x == -inf``,
    with a max-reduction from ``-inf`` of the same ``x`` over the same dims
    beside it: (that max, for each of its dims the position of the same loop
    dim among ``check``'s output dims); else None."""
    if (check.name != "linalg.generic" or len(check.operands) != 2 or _body(check) != ["arith.andi(0,1)"]
            or fill_value(check.operands[1]) != 1 or _map_texts(check)[0] != _identity(check)):
        return None
    test = defining_op(check.operands[0])
    if (test is None or test.name != "linalg.generic" or len(test.operands) != 2 or not _all_parallel(test)
            or not _one_use(test.results[0]) or set(_map_texts(test)) != {_identity(test)} or not _is_minus_inf_test(test)):
        return None
    parallel = [d for d, kind in enumerate(_iterators(check)) if kind == "parallel"]
    out_dims = _result_dims(check, 1)
    if [d for d in out_dims if d is not None] != parallel:
        return None
    x = test.operands[0]
    for use in x.uses:
        peer = use.owner
        if (peer.name == "linalg.generic" and len(peer.operands) - len(peer.results) == 1 and peer.operands[0] == x and _iterators(peer) == _iterators(check)
                and _map_texts(peer)[0] == _identity(peer) and _result_dims(peer, 1) == parallel
                and _body(peer, yielded=0) == "arith.maximumf(0,1)" and fill_value(peer.operands[1]) == float("-inf")):
            return peer.results[0], [out_dims.index(d) for d in parallel]
    return None


def _is_minus_inf_test(op: Any) -> bool:
    """``op``'s body yields ``in == -inf`` (``in`` or its extension to f64, against a constant)."""
    from torch_mlir import ir

    block = op.regions[0].blocks[0]
    cmp = defining_op(list(block.operations)[-1].operands[0])
    if cmp is None or cmp.name != "arith.cmpf" or ir.IntegerAttr(cmp.attributes["predicate"]).value != 1:  # oeq
        return False
    def unextended(v: Any) -> Any:
        ext = defining_op(v)
        return ext.operands[0] if ext is not None and ext.name == "arith.extf" else v

    seen = [unextended(v) for v in cmp.operands]
    constants = [_float_constant(v) for v in seen]
    return sorted(map(str, constants)) == ["-inf", "None"] and block.arguments[0] in seen


def _body(op: Any, yielded: int | None = None) -> list[str] | str:
    """A linalg op's body as ``name(block arg positions)`` per op, the yield left
    out; with ``yielded``, only the op giving that yielded value."""
    block = op.regions[0].blocks[0]
    args = list(block.arguments)

    def text(inner: Any) -> str:
        return f"{inner.name}({','.join(str(args.index(v)) if v in args else '_' for v in inner.operands)})"

    ops = list(block.operations)
    if yielded is not None:
        producer = defining_op(ops[-1].operands[yielded])
        return text(producer) if producer is not None else ""
    return [text(inner) for inner in ops[:-1]]


def _one_use(value: Any) -> bool:
    return len(list(value.uses)) == 1


def _iterators(op: Any) -> list[str]:
    return re.findall(r"parallel|reduction", str(op.attributes["iterator_types"]))


def _all_parallel(op: Any) -> bool:
    return set(_iterators(op)) == {"parallel"}


def _map_texts(op: Any) -> list[str]:
    return [str(m) for m in indexing_maps(op)]


def _identity(op: Any) -> str:
    dims = ", ".join(f"d{i}" for i in range(len(_iterators(op))))
    return f"({dims}) -> ({dims})"


def _result_dims(op: Any, operand: int) -> list[int | None]:
    """Per result of ``op``'s indexing map for ``operand``: its loop dim, or None for a constant 0."""
    from torch_mlir import ir

    dims: list[int | None] = []
    for expr in indexing_maps(op)[operand].results:
        if isinstance(expr, ir.AffineDimExpr):
            dims.append(expr.position)
        elif isinstance(expr, ir.AffineConstantExpr) and expr.value == 0:
            dims.append(None)
        else:
            return [-1]
    return dims


def _float_constant(value: Any) -> float | None:
    from torch_mlir import ir

    op = defining_op(value)
    attr = op.attributes["value"] if op is not None and op.name == "arith.constant" else None
    return attr.value if isinstance(attr, ir.FloatAttr) else None


def weight_matvecs(program: Program) -> list[Any]:
    """The ``linalg.matmul`` ops (in any function of the module) of one row
    against an f32 weight read through transposes and reshapes only, with a
    multiple of 16 outputs, whose weight only such ops read (a batch-4 variant
    beside the batch-1 one keeps both on IREE's matmul: packing for one would
    store the weight twice): matvecs_as_panels() rewrites these."""
    packable = _packable_weights(program)
    return [op for op in walk_nested(program.module.operation) if _is_weight_matvec(program, op, packable)]


def _is_weight_matvec(program: Program, op: Any, packable: set[str]) -> bool:
    weight = _matvec_weight(program, op)
    return weight is not None and weight[0] in packable


def _packable_weights(program: Program) -> set[str]:
    """Weights every reader of which is a one-row matmul (_matvec_weight)."""
    from torch_mlir import ir

    readers: dict[str, int] = {}
    matvecs: dict[str, int] = {}

    def traced(value: Any) -> str | None:
        found = program.trace_param(value) if isinstance(value.type, ir.RankedTensorType) else None
        return found[0] if found is not None else None

    for op in walk_nested(program.module.operation):  # generic bodies too: a tensor.extract reads a table
        if op.results and traced(op.results[0]) is not None:
            continue  # the constant itself or a view of it: not a reader
        for param in {traced(v) for v in op.operands} - {None}:
            readers[param] = readers.get(param, 0) + 1
        weight = _matvec_weight(program, op)
        if weight is not None:
            matvecs[weight[0]] = matvecs.get(weight[0], 0) + 1
    return {param for param, n in matvecs.items() if readers[param] == n}


def _matvec_weight(program: Program, op: Any) -> tuple[str, list[tuple[str, Any]]] | None:
    if op.name != "linalg.matmul" or len(op.operands) != 3:
        return None
    lhs = shape_of(op.operands[0])
    if len(lhs) != 2 or lhs[0] != 1 or shape_of(op.results[0])[1] % MATVEC_LANES[-1]:
        return None
    traced = program.trace_param(op.operands[1])
    if traced is None or program.params[traced[0]].dtype != np.float32:
        return None
    return traced if all(kind in ("transpose", "reshape") for kind, _ in traced[1]) else None


def matvecs_as_panels(program: Program) -> Program:
    """matvec_panel_rule() alone: see configured_contractions()."""
    return _rewrite_each(program, matvec_panel_rule(program))


def matvec_panel_rule(program: Program) -> tuple[Callable[[Any], bool], Callable[[Program, Any], None]]:
    """Rewrites every weight_matvecs() op ``y = x·W`` (x: 1×K,
    W: K×N) is a reduction over the weight stored as panels of L outputs,
    P[t, k, i] = W[k, t·L + i] (L the widest of MATVEC_LANES dividing N):

        y[t, i] = init[t·L + i] + Σ_k x[k]·P[t, k, i]

    with a lowering config that keeps a panel row's L/16 vectors as separate
    accumulators (see MATVEC_LANES). Panels are new constants, one per weight
    and width, shared by every use."""
    from torch_mlir import ir

    from optc.builder import Builder

    panels: dict[tuple[str, str, int], ir.Value] = {}
    configs: dict[int, ir.Attribute] = {}  # per panel width: every step of an RNN shares one

    def rewrite(copy: Program, op: Any) -> None:
        x, w, init = op.operands
        k, n = shape_of(w)
        lanes = next(lane for lane in MATVEC_LANES if n % lane == 0)
        func = copy.function(_enclosing_function(op))
        param, chain = func.trace_param(w)
        key = (func.func_name, param, lanes)
        if key not in panels:
            weight = apply_view(copy.params[param], chain).reshape(k, n // lanes, lanes).transpose(1, 0, 2)
            panels[key] = func.constant(f"{param}.panels{lanes}", weight, origin=copy.layer_of(param))
        if lanes not in configs:
            configs[lanes] = _double_tiling(copy, [MATVEC_PANELS_PER_WORKGROUP, 0, 0], [1, lanes, 0], [0, 0, MATVEC_K_UNROLL])
        with Builder(copy, before=op) as b:
            acc = b.collapse(b.expand(init, [[0], [1, 2]], (1, n // lanes, lanes)), [[0, 1], [2]])
            y = b.generic([b.collapse(x, [[0, 1]]), panels[key]], acc,
                          ["(t, i, k) -> (k)", "(t, i, k) -> (t, k, i)", "(t, i, k) -> (t, i)"],
                          lambda xv, wv, out: b.add(out, b.mul(xv, wv)), attrs={"compilation_info": configs[lanes]},
                          iterators=["parallel", "parallel", "reduction"])
            out = b.collapse(b.expand(y, [[0, 1], [2]], (1, n // lanes, lanes)), [[0], [1, 2]])
        op.results[0].replace_all_uses_with(out)
        op.erase()

    packable = _packable_weights(program)
    return (lambda op: _is_weight_matvec(program, op, packable)), rewrite


def attention_matmul_rule(program: Program) -> tuple[Callable[[Any], bool], Callable[[Program, Any], None]]:
    """Rewrites every attention_matmuls() op whose rows divide by
    ATTENTION_TILE_ROWS and whose outputs by 16 into the same contraction as a
    generic with its own lowering config (ATTENTION_TILE_*), which IREE's data
    tiling leaves alone."""
    from optc.builder import Builder

    configs: dict[tuple[int, ...], Any] = {}

    def tiles(op: Any) -> tuple[int, ...] | None:
        _, m, n = shape_of(op.results[0])
        lanes = next((lane for lane in ATTENTION_TILE_LANES if n % lane == 0), None)
        if lanes is None or m % ATTENTION_TILE_ROWS or min(m, n) <= 0:  # a dynamic dim reads negative
            return None
        return min(m, ATTENTION_WORKGROUP[0]), min(n, ATTENTION_WORKGROUP[1]), lanes

    def picked(op: Any) -> bool:
        return _is_attention_matmul(program, op) and tiles(op) is not None

    def rewrite(copy: Program, op: Any) -> None:
        (a, a_read), (b, b_read) = _through_transpose(op.operands[0], ["g", "i", "k"]), _through_transpose(op.operands[1], ["g", "k", "j"])
        init = op.operands[2]
        rows, cols, lanes = key = tiles(op)
        if key not in configs:
            configs[key] = _double_tiling(copy, [1, rows, cols, 0], [1, ATTENTION_TILE_ROWS, lanes, 0], [0, 0, 0, 1])
        with Builder(copy, before=op) as bld:
            y = bld.generic([a, b], init, [f"(g, i, j, k) -> ({a_read})", f"(g, i, j, k) -> ({b_read})", "(g, i, j, k) -> (g, i, j)"],
                            lambda x, w, out: bld.add(out, bld.mul(x, w)), attrs={"compilation_info": configs[key]},
                            iterators=["parallel", "parallel", "parallel", "reduction"])
        op.results[0].replace_all_uses_with(y)
        op.erase()

    return picked, rewrite


def _through_transpose(value: Any, dims: list[str]) -> tuple[Any, str]:
    """(the tensor a generic reads for ``value`` at ``dims``, the dims it reads there):
    a ``linalg.transpose``'s input, read in its own order, instead of a transposed
    copy (IREE would fold the transpose into the generic anyway, without its
    lowering config)."""
    from torch_mlir import ir

    producer = defining_op(value)
    if producer is None or producer.name != "linalg.transpose":
        return value, ", ".join(dims)
    source = [""] * len(dims)
    for out_dim, in_dim in enumerate(ir.DenseI64ArrayAttr(producer.attributes["permutation"])):
        source[in_dim] = dims[out_dim]
    return producer.operands[0], ", ".join(source)


def configured_contractions(program: Program) -> Program:
    """A copy of ``program`` with matvec_panel_rule() and attention_matmul_rule()
    applied; ``program`` itself when neither picks an op. Both attach IREE
    lowering configs, attributes torch-mlir's context holds only opaquely: the
    copy cannot be cloned again (Program.clone parses it anew), so this is one
    clone and the last rewrite before iree-compile."""
    return _rewrite_each(program, matvec_panel_rule(program), attention_matmul_rule(program))


def _double_tiling(program: Program, distribution: list[int], parallel: list[int], reduction: list[int]) -> Any:
    """An op's own lowering config for IREE's DoubleTilingExpert pipeline: workgroup
    tiles, then vector tiles of the parallel and of the reduction loops."""
    return _iree_attribute(
        program, "#iree_codegen.compilation_info<lowering_config = #iree_cpu.lowering_config<"
        f"distribution = {distribution}, vector_common_parallel = {parallel}, vector_reduction = {reduction}>, "
        "translation_info = #iree_codegen.translation_info<pipeline = #iree_cpu.pipeline<DoubleTilingExpert>>>")


def _iree_attribute(program: Program, text: str) -> Any:
    """An attribute of IREE's own dialects, which torch-mlir's context does not
    register: held opaque, written into the bytecode as text, parsed by iree-compile."""
    from torch_mlir import ir

    context = program.context
    allowed = context.allow_unregistered_dialects
    context.allow_unregistered_dialects = True
    try:
        with context:
            return ir.Attribute.parse(text)
    finally:
        context.allow_unregistered_dialects = allowed


def _enclosing_function(op: Any) -> str:
    from torch_mlir import ir

    parent = op.parent
    while parent.name != "func.func":
        parent = parent.parent
    return ir.StringAttr(parent.attributes["sym_name"]).value


def _rewrite_each(program: Program, *rules: tuple[Callable[[Any], bool], Callable[[Program, Any], None]]) -> Program:
    """A copy of ``program`` in which, for each rule ``(picked, rewrite)`` in turn,
    ``rewrite(copy, op)`` is applied to every op (in any function of the module)
    that ``picked`` selects in ``program``; ``program`` itself when none is."""
    ops = list(walk_nested(program.module.operation))
    if not any(picked(op) for op in ops for picked, _ in rules):
        return program
    copy = program.clone()
    copied = list(walk_nested(copy.module.operation))  # the same ops in the same order
    chosen = [[mine for op, mine in zip(ops, copied) if picked(op)] for picked, _ in rules]
    for (_, rewrite), mine in zip(rules, chosen):
        for op in mine:
            rewrite(copy, op)
    return copy


def _nhwc_tap_slices(b: Any, x: Any, taps: list[tuple[int, int]], strides: list[int], dilations: list[int], out_nhwc: list[int]) -> list[Any]:
    """Per tap (i, j), the strided slice x[n, oh·sh + i·dh, ow·sw + j·dw, c] of the NCHW image ``x`` made channels-last."""
    xt = b.transpose(x, [0, 2, 3, 1])
    return [b.slice(xt, [0, i * dilations[0], j * dilations[1], 0], out_nhwc, [1, *strides, 1]) for i, j in taps]


def _channels_as_images(conv: Any) -> tuple[Any, Any] | None:
    """For a one-input-channel conv over an N×C×H×W image viewed as N·C one-channel
    images, whose N·C×F maps are viewed back as N × C·F channels (penni's basis
    stage): (the image, the op giving the N × C·F view); else None."""
    from torch_mlir import ir

    def only_user(value: Any) -> Any:
        users = [u.owner for u in value.uses]
        return users[0] if len(users) == 1 else None

    def reshape(op: Any, name: str) -> bool:
        return isinstance(op, ir.OpView) and op.name == name and reassociation(op) == [[0, 1], [2], [3]]

    split = conv.operands[0].owner
    merged = split.operands[0].owner if reshape(split, "tensor.expand_shape") else None
    if not reshape(merged, "tensor.collapse_shape"):
        return None
    flat = only_user(conv.results[0])
    view = only_user(flat.results[0]) if reshape(flat, "tensor.collapse_shape") else None
    if not reshape(view, "tensor.expand_shape"):
        return None
    return merged.operands[0], view.operation


def _conv_geometry(conv: Any) -> tuple[list[int], list[int]]:
    """(strides, dilations) of a named linalg conv."""
    from torch_mlir import ir

    return ([int(v) for v in ir.DenseIntElementsAttr(conv.attributes["strides"])],
            [int(v) for v in ir.DenseIntElementsAttr(conv.attributes["dilations"])])


def _taps(kernel_hw: Any) -> list[tuple[int, int]]:
    return [(i, j) for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]


def _sum_of_taps(b: Any, images: list[Any], kernels: list[Any], image_map: str, kernel_map: str, init: Any) -> Any:
    """init + Σ_t images[t]·kernels[t]: one elementwise generic, every tap's image and
    weights its own operands (the output map is the identity of ``image_map``'s loops)."""
    loops = image_map.split(" -> ")[0]
    maps = [m for _ in images for m in (image_map, kernel_map)] + [f"{loops} -> {loops}"]

    def body(*args: Any) -> Any:
        total = args[-1]
        for t in range(len(images)):
            total = b.add(total, b.mul(args[2 * t], args[2 * t + 1]))
        return total

    return b.generic([v for pair in zip(images, kernels) for v in pair], init, maps, body)


@hookimpl
def optc_register_targets(register):
    register(CpuTarget())
