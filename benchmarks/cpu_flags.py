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

from optc.targets.cpu import FAST_FLAGS  # noqa: E402

# Each set is (fast?, extra flags); "fast" is the first three of the default flags,
# as they were before this sweep, so the rows stay comparable.
BASE = FAST_FLAGS[:3]
FLAG_SETS: dict[str, tuple[str, ...]] = {
    "host only": ("--opt-none",),
    "default (all fast flags)": ("--default",),
    "fast": (),
    "fast + aggressive fusion": ("--iree-dispatch-creation-enable-aggressive-fusion",),
    "fast + ukernels": ("--iree-llvmcpu-enable-ukernels=all",),
    "fast + ukernels + aggressive fusion": ("--iree-llvmcpu-enable-ukernels=all", "--iree-dispatch-creation-enable-aggressive-fusion"),
    "fast + aggressive fusion + channels-last": (
        "--iree-dispatch-creation-enable-aggressive-fusion",
        "--iree-preprocessing-pass-pipeline=builtin.module(util.func(iree-preprocessing-convert-conv-to-channels-last))",
    ),
    "fast + ukernels + aggressive fusion + channels-last": (
        "--iree-llvmcpu-enable-ukernels=all",
        "--iree-dispatch-creation-enable-aggressive-fusion",
        "--iree-preprocessing-pass-pipeline=builtin.module(util.func(iree-preprocessing-convert-conv-to-channels-last))",
    ),
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

    from optc.bench import BURST, artifact_worker, eager_worker, time_interleaved
    from optc.driver import load_and_lower, log
    from optc.errors import CompileError
    from optc.targets.cpu import CpuOptions, CpuTarget
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
            extra = FLAG_SETS[name]
            if extra == ("--default",):
                opts = CpuOptions()
            else:
                opts = CpuOptions(fast=False, flags=() if extra == ("--opt-none",) else BASE + extra)
            log(f"compiling '{name}': {' '.join(target.flags(opts))}")
            try:
                art = target.compile(program, opts)
            except CompileError as e:
                print(f"{name}: {e}")
                continue
            runners[name] = stack.enter_context(artifact_worker("cpu", opts, art.vmfb, inputs, args.threads))
            err = compare(runners[name].outputs(), reference).max_rel
            log(f"  {art.compile_seconds:.0f} s compile, max rel err {err:.1e}")
        how = {name: r.description for name, r in runners.items()}
        t = time_interleaved(runners, min_rounds=args.min_rounds, min_seconds=args.min_seconds, progress=log)
    eager = t["eager"].as_dict()["median"]
    print(f"\n{args.model}, batch {args.batch}, {args.threads} threads, {len(t['eager'].samples) // (BURST - 1)} interleaved rounds")
    print(f"eager: {how['eager']}; each flag set: {how[chosen[0]] if len(how) > 1 else '-'}\n")
    print("| flags | median ms | p10–p90 ms | eager ÷ this |")
    print("|---|---|---|---|")
    for name, timing in t.items():
        d = timing.as_dict()
        print(f"| {name} | {d['median']:.2f} | {d['p10']:.2f}–{d['p90']:.2f} | {eager / d['median']:.2f} |")


if __name__ == "__main__":
    main()
