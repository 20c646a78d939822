"""Measure IREE llvm-cpu flag sets against PyTorch eager on one model, each in its
own worker process (optc.bench), interleaved — how the cpu target's default
flags were chosen.

    .venv/bin/python benchmarks/cpu_flags.py examples.reference_models:bert [--threads 2] [--batch 1]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optc.targets.cpu import FAST_FLAGS, CpuOptions  # noqa: E402

IM2COL = "--iree-global-opt-use-im2col-for-convs"
CHANNELS_LAST = "iree-preprocessing-convert-conv-to-channels-last"
# IREE's own Winograd pass on every 3x3 stride-1 dilation-1 conv (the target's
# default writes Winograd's algorithm as linalg ops itself, on the convs
# targets/cpu.py:winograd_convs() selects: see WINOGRAD_MIN_OUTPUT).
WINOGRAD_ALL = "iree-linalg-ext-convert-conv2d-to-winograd{replace-all-convs=true}"


def pipeline(*passes: str) -> str:
    return f"--iree-preprocessing-pass-pipeline=builtin.module(util.func({','.join(passes)}))"


def flag_set(drop: tuple[str, ...] = (), preprocessing: tuple[str, ...] | None = None, add: tuple[str, ...] = ()) -> CpuOptions:
    """The cpu target's fast flags without ``drop``, with another preprocessing
    pipeline (its passes), plus ``add``; no conv is rewritten for Winograd (fast=False)."""
    flags = [f for f in FAST_FLAGS if f not in drop and not (preprocessing is not None and f.startswith("--iree-preprocessing-pass-pipeline"))]
    if preprocessing:
        flags.append(pipeline(*preprocessing))
    return CpuOptions(fast=False, flags=(*flags, *add))


# Each set is the cpu target's options: either the default fast set with another
# Winograd threshold (CpuOptions.winograd), or a whole flag list after
# --iree-llvmcpu-target-cpu. "fast" is the first three fast flags, as they were
# before the first sweep, so the rows of that sweep stay comparable.
BASE = FAST_FLAGS[:3]
HOIST_ANY_SIZE = "--iree-opt-const-expr-max-size-increase-threshold=1000000000000"
FLAG_SETS: dict[str, CpuOptions] = {
    "host only": CpuOptions(fast=False),
    "default": CpuOptions(),
    "default without winograd": CpuOptions(winograd=0),
    "default with winograd >= 56x56": CpuOptions(winograd=56),
    "default with winograd >= 28x28": CpuOptions(winograd=28),
    "default with winograd >= 7x7": CpuOptions(winograd=7),
    # IREE's transpose propagation, which the default turns off for programs
    # with attention (targets/cpu.py: NO_TRANSPOSE_PROPAGATION, measured with
    # these two sets). On the reference encoder its layers are copies, which
    # IREE dedups without propagation (13.7 -> 4.3 MB artifact): measure
    # attention models with distinct weights per layer.
    "default with transpose propagation": CpuOptions(flags=("--iree-global-opt-propagate-transposes=true",)),
    "default without transpose propagation": CpuOptions(flags=("--iree-global-opt-propagate-transposes=false",)),
    # Reshape movement around bcr's windowed scatters, (…, window, lane) ops
    # whose reshape IREE pushes into their consumers (issue 10). Moving
    # reshapes across reductions keeps a following layer norm in two
    # dispatches instead of four, but made the dense encoder 2.3x, ResNet-18
    # 1.3x and the LSTM 1.1x slower (MobileNetV2 1.2x faster): not adopted.
    # Collapses across expands is in the fast set (targets/cpu.py).
    "default + aggressive reshape movement": CpuOptions(flags=("--iree-dispatch-creation-enable-aggressive-reshape-movement",)),
    "default + collapse across expands": CpuOptions(flags=("--iree-dispatch-creation-propagate-collapse-across-expands",)),
    "fast": CpuOptions(fast=False, flags=BASE),
    "fast + aggressive fusion": CpuOptions(fast=False, flags=(*BASE, "--iree-dispatch-creation-enable-aggressive-fusion")),
    "fast + ukernels": CpuOptions(fast=False, flags=(*BASE, "--iree-llvmcpu-enable-ukernels=all")),
    "fast + ukernels + aggressive fusion": CpuOptions(fast=False, flags=(*BASE, "--iree-llvmcpu-enable-ukernels=all", "--iree-dispatch-creation-enable-aggressive-fusion")),
    "fast + aggressive fusion + channels-last": CpuOptions(fast=False, flags=(*BASE, "--iree-dispatch-creation-enable-aggressive-fusion", pipeline(CHANNELS_LAST))),
    # Convolution candidates (issue 10, item 3): ways around im2col materialization.
    # ResNet-18-shaped, batch 1, 2 threads, 2026-11-23 on a 2-core machine that other
    # processes kept 83-91% busy (so absolute ms are ~10x quiet ones; compare rows
    # of one run only). Medians, (im2col, no Winograd) ÷ this (p10-p90 of each row overlap):
    #   - im2col (direct conv, data tiling on matmuls only)  0.10x   run 1
    #   - im2col + conv data tiling (experimental in 3.13)    0.10x   run 1
    #   + winograd, all 3x3 stride-1 convs                    0.17x   run 1 (filters
    #       re-transformed and re-packed every call: 80% of dispatch time)
    #   + winograd + hoisted filters                          1.31x, 1.55x (runs 4, 2)
    #       artifact 44.7 -> 264.8 MiB; stage-4 64x4x512x512 batch_matmul is 29%
    #   + winograd on tagged convs (>= 56x56) + hoisted      1.20x   run 4, 48.2 MiB
    #   + winograd on tagged convs (>= 28x28) + hoisted      1.61x, 1.43x (runs 4, 2), 58.5 MiB
    #   + winograd on tagged convs (>= 14x14) + hoisted      1.52x   run 3
    # The >= 28x28 row became the target's default, with IREE's pass on tagged
    # convs; since 2026-12-05 the target writes Winograd as linalg ops, >= 14x14.
    "no im2col": flag_set(drop=(IM2COL,)),
    "no im2col + conv data tiling": flag_set(drop=(IM2COL,), add=tuple(
        f"--iree-dispatch-creation-experimental-set-data-tiling-ops={ops}" for ops in ("matmul", "scaled_matmul", "convolution"))),
    "winograd on all 3x3 convs": flag_set(preprocessing=(WINOGRAD_ALL, CHANNELS_LAST)),
    "winograd on all 3x3 convs + hoisted filters": flag_set(preprocessing=(WINOGRAD_ALL, CHANNELS_LAST), add=(HOIST_ANY_SIZE,)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--min-rounds", type=int, default=20)
    ap.add_argument("--sets", default="", help="comma-separated names of FLAG_SETS to run (default all)")
    args = ap.parse_args()

    from optc.bench import artifact_worker, eager_worker, time_workers
    from optc.driver import load_and_lower, log
    from optc.errors import CompileError
    from optc.targets.cpu import CpuTarget, winograd_convs
    from optc.verify import compare, eager_outputs

    unknown = [s for s in args.sets.split(",") if s and s not in FLAG_SETS]
    if unknown:
        sys.exit(f"unknown flag sets {unknown}; known: {list(FLAG_SETS)}")
    loaded, program = load_and_lower(args.model, False, (), args.batch)
    inputs = program.example_inputs
    reference = eager_outputs(loaded.module, inputs)
    target = CpuTarget()
    with contextlib.ExitStack() as stack:
        runners = {"eager": stack.enter_context(eager_worker(args.model, inputs, args.threads))}
        chosen = [s for s in FLAG_SETS if not args.sets or s in args.sets.split(",")]
        for name in chosen:
            opts = FLAG_SETS[name]
            winograd = len(winograd_convs(program, opts.winograd)) if opts.fast else 0
            log(f"compiling '{name}' ({winograd} convs on Winograd): {' '.join(target.flags_for(program, opts))}")
            try:
                art = target.compile(program, opts)
            except CompileError as e:
                print(f"{name}: {e}")
                continue
            runners[name] = stack.enter_context(artifact_worker("cpu", opts, art.vmfb, inputs, args.threads))
            err = compare(runners[name].outputs(), reference).max_rel
            log(f"  {art.compile_seconds:.0f} s compile, max rel err {err:.1e}")
        how = {name: r.description for name, r in runners.items()}
        measured = time_workers(runners, min_rounds=args.min_rounds, min_seconds=args.min_seconds, progress=log)
    t = measured.timings
    eager = t["eager"].as_dict()["median"]
    print(f"\n{args.model}, batch {args.batch}, {args.threads} threads, {measured.rounds} interleaved rounds")
    print(f"eager: {how['eager']}; each flag set: {how[chosen[0]] if len(how) > 1 else '-'}")
    if measured.load_line():
        print(measured.load_line())
    print()
    print("| flags | median ms | p10–p90 ms | eager ÷ this |")
    print("|---|---|---|---|")
    for name, timing in t.items():
        d = timing.as_dict()
        print(f"| {name} | {d['median']:.2f} | {d['p10']:.2f}–{d['p90']:.2f} | {eager / d['median']:.2f} |")


if __name__ == "__main__":
    main()
