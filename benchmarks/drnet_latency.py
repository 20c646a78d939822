"""Average latency over an --eval set: a drnet artifact (its latency depends on
each image's chosen resolution) against the full-resolution compile of the same
model, both built for the cpu target with default options, each run in this
process on the IREE driver its metadata names (cpu.driver).

    python benchmarks/drnet_latency.py DRNET.vmfb FULL.vmfb EVAL.npz [--repeats 3]

Each sample is one call at the model's batch size (the eval set is chunked like
``--eval``); the two artifacts alternate per repeat, and the median of the
repeats' per-image means is printed with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from optc.api import build_options
from optc.calibration import read_arrays
from optc.metadata import optc_info, read, recorded_target_options
from optc.registry import load_registry


def per_image_seconds(session, chunks: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for chunk in chunks:
        session(chunk)
    return (time.perf_counter() - start) / sum(len(c) for c in chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("drnet", type=Path)
    parser.add_argument("full", type=Path)
    parser.add_argument("eval", type=Path)
    parser.add_argument("--batch", type=int, default=1, help="the models' batch size (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = load_registry().target("cpu")

    def options(path: Path):
        return build_options("cpu", cpu.Options, recorded_target_options(optc_info(read(path))))

    sessions = {name: cpu.open(path.read_bytes(), options(path)) for name, path in (("drnet", args.drnet), ("full", args.full))}
    for name, s in sessions.items():
        print(f"{name}: runs on {s.driver}")
    x = np.ascontiguousarray(read_arrays(args.eval, "eval")["x"].astype(np.float32))
    usable = len(x) - len(x) % args.batch
    chunks = [x[i:i + args.batch] for i in range(0, usable, args.batch)]
    for s in sessions.values():  # warm up
        s(chunks[0])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.repeats):
        for name, s in sessions.items():
            times[name].append(per_image_seconds(s, chunks))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in sessions:
        print(f"{name}: {med[name] * 1e6:.1f} us/image over {usable} images (median of {args.repeats})")
    print(f"drnet / full latency: {med['drnet'] / med['full']:.3f} ({1 - med['drnet'] / med['full']:.1%} lower)")


if __name__ == "__main__":
    main()
