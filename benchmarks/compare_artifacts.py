"""Latency of several cpu artifacts of one model, each in its own worker process,
timed in interleaved rounds (optc.bench) — the robust way to compare IREE
artifacts on a busy machine (use ``--threads 1``).

Each ARTIFACT.vmfb needs its report ARTIFACT.json (written by ``optc compile``)
for the input shapes and cpu options; all artifacts must take the same inputs.
The first artifact is the baseline of the ratio column.

    .venv/bin/python benchmarks/compare_artifacts.py out/r/dense.vmfb out/r/penni.vmfb [--threads 1] [--min-rounds 20] [--min-seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--min-rounds", type=int, default=20)
    args = ap.parse_args()

    from optc.bench import artifact_worker, time_workers
    from optc.driver import log
    from optc.targets.cpu import CpuOptions

    reports = {a: json.loads(a.with_suffix(".json").read_text()) for a in args.artifacts}
    shapes = {tuple(tuple(i["shape"]) for i in r["inputs"]) for r in reports.values()}
    if len(shapes) != 1:
        sys.exit(f"the artifacts take different inputs: {sorted(shapes)}")
    rng = np.random.default_rng(0)
    first = next(iter(reports.values()))
    inputs = [rng.normal(size=i["shape"]).astype(i["dtype"]) for i in first["inputs"]]
    with contextlib.ExitStack() as stack:
        runners = {}
        for a, r in reports.items():
            o = r["target"]["options"]
            opts = CpuOptions(**{**o, "flags": tuple(o["flags"])})
            runners[a.name] = stack.enter_context(artifact_worker("cpu", opts, a.read_bytes(), inputs, args.threads))
        measured = time_workers(runners, min_rounds=args.min_rounds, min_seconds=args.min_seconds, progress=log)
    t = measured.timings
    base = t[args.artifacts[0].name].as_dict()["median"]
    print(f"\n{args.threads} threads, {measured.rounds} interleaved rounds")
    if measured.load_line():
        print(measured.load_line())
    print()
    print("| artifact | MACs | median ms | p10–p90 ms | baseline ÷ this |")
    print("|---|---|---|---|---|")
    for a, r in reports.items():
        d = t[a.name].as_dict()
        print(f"| {a.name} | {r['totals']['macs_after']:,} | {d['median']:.2f} | {d['p10']:.2f}–{d['p90']:.2f} | {base / d['median']:.2f} |")


if __name__ == "__main__":
    main()
