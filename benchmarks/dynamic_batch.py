"""What ``--dynamic-batch`` costs: one dynamic-batch artifact against a
fixed-batch artifact of the same model at each batch, every artifact in its
own worker process, timed in interleaved rounds (optc.bench), and the ratio
dynamic ÷ fixed per batch (the goal: ≤ 1.10). All run on the IREE driver the
dynamic artifact names (cpu.driver=auto picks it by its largest variant, while
a small fixed-batch artifact gets local-sync): the ratio is what the
dispatcher costs, not what a different driver does.

    .venv/bin/python benchmarks/dynamic_batch.py [MODEL] [--batches 1,8,32] [--threads 2] [--out out/dynamic_batch]

MODEL defaults to the digits CNN (``python -m examples.digits`` writes it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="out/digits/digits_cnn.pt2")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--min-rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("out/dynamic_batch"))
    args = ap.parse_args()

    from optc.bench import artifact_worker, time_workers
    from optc.driver import compile_model, load_and_lower, log, select

    batches = [int(b) for b in args.batches.split(",")]
    sel = select([], "cpu", {}, {})
    artifacts = {}
    for b in batches:
        log(f"compiling {args.model} at batch {b}")
        artifacts[f"fixed b{b}"] = compile_model(args.model, sel, loaded_and_lowered=load_and_lower(args.model, False, (), b)).artifact
    log(f"compiling {args.model} with --dynamic-batch")
    loaded, program = load_and_lower(args.model, False, ())
    artifacts["dynamic"] = compile_model(args.model, sel, loaded_and_lowered=(loaded, program), dynamic_batch=True).artifact
    args.out.mkdir(parents=True, exist_ok=True)
    for name, a in artifacts.items():
        (args.out / f"{name.replace(' ', '_')}.vmfb").write_bytes(a.vmfb)

    driver = artifacts["dynamic"].options.driver
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        inputs = [rng.normal(size=(b,) + tuple(x.shape[1:])).astype(x.dtype) for x in program.example_inputs]
        with contextlib.ExitStack() as stack:
            runners = {
                name: stack.enter_context(artifact_worker("cpu", dataclasses.replace(a.options, driver=driver), a.vmfb, inputs, args.threads))
                for name, a in ((f"fixed b{b}", artifacts[f"fixed b{b}"]), ("dynamic", artifacts["dynamic"]))
            }
            measured = time_workers(runners, min_rounds=args.min_rounds, min_seconds=args.min_seconds, progress=log)
        fixed, dynamic = (measured.timings[n].as_dict()["median"] for n in (f"fixed b{b}", "dynamic"))
        rows.append((b, fixed, dynamic, measured.rounds, measured.load_line()))

    print(f"\n{args.model}, cpu, driver {driver}, {args.threads} threads; each batch its own interleaved run (medians)")
    print("| batch | fixed-batch ms | dynamic-batch ms | dynamic ÷ fixed | rounds |")
    print("|---|---|---|---|---|")
    for b, fixed, dynamic, rounds, _ in rows:
        print(f"| {b} | {fixed:.3f} | {dynamic:.3f} | {dynamic / fixed:.2f} | {rounds} |")
    for b, *_, load in rows:
        if load:
            print(f"batch {b}: {load}")
    sizes = {name: len(a.vmfb) for name, a in artifacts.items()}
    print("artifact bytes: " + ", ".join(f"{n} {s:,}" for n, s in sizes.items()))


if __name__ == "__main__":
    main()
