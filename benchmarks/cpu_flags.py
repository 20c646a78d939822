"""Measure IREE llvm-cpu flag sets against PyTorch eager on one model, in one
process, interleaved — how the cpu target's default flags were chosen.

    .venv/bin/python benchmarks/cpu_flags.py examples.reference_models:bert [--threads 2] [--batch 1]
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--sets", default="", help="comma-separated names of FLAG_SETS to run (default all)")
    args = ap.parse_args()

    from optc.bench import passive_openmp, set_threads, time_interleaved

    passive_openmp()  # as optc bench does, before torch is imported
    import torch

    from optc.driver import load_and_lower, log
    from optc.errors import CompileError
    from optc.targets.cpu import CpuOptions, CpuTarget
    from optc.verify import compare, eager_outputs

    set_threads(args.threads)
    loaded, program = load_and_lower(args.model, False, (), args.batch)
    inputs = program.example_inputs
    reference = eager_outputs(loaded.module, inputs)
    torch_inputs = [torch.from_numpy(x) for x in inputs]
    target = CpuTarget()
    runners = {"eager": lambda: loaded.module(*torch_inputs)}
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
        session = target.open(art.vmfb, opts)
        err = compare(session(*inputs), reference).max_rel
        log(f"  {art.compile_seconds:.0f} s compile, max rel err {err:.1e}")
        runners[name] = (lambda s: lambda: s.invoke(*inputs))(session)
    with torch.no_grad():
        t = time_interleaved(runners, min_seconds=args.min_seconds, progress=log)
    eager = t["eager"].as_dict()["median"]
    print(f"\n{args.model}, batch {args.batch}, {args.threads} threads, {len(t['eager'].samples)} interleaved rounds\n")
    print("| flags | median ms | eager ÷ this |")
    print("|---|---|---|")
    for name, timing in t.items():
        med = timing.as_dict()["median"]
        print(f"| {name} | {med:.2f} | {eager / med:.2f} |")


if __name__ == "__main__":
    main()
