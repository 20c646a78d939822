"""The C app's per-image latency against `iree-benchmark-module`'s on the same
artifact (the goal: the app adds nothing, within 10%).

Both run the artifact on the driver its metadata names (optc's cpu.driver:
local-sync for small models, else local-task with the runtime's default threads), in
separate processes, alternated for --rounds rounds. Each round,
`iree-benchmark-module --benchmark_min_time=Nx` reports its mean time per call (its
input buffer made once; call and wait) and `classify --repeat N` its mean per call
(upload the image, call, download the logits). The table gives the median over
rounds of each and their ratio.

    .venv/bin/python benchmarks/app_latency.py [--artifact out/digits_cnn_b1.vmfb] [--calls 2000] [--rounds 7]

Without --artifact it compiles the digits CNN (examples/digits.py, out/digits) at batch 1.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def benchmark_module(vmfb: Path, x: Path, calls: int, device: str) -> float:
    """iree-benchmark-module's mean ms per call."""
    proc = subprocess.run(
        [str(BIN / "iree-benchmark-module"), f"--module={vmfb}", "--function=main", f"--device={device}",
         f"--input=@{x}", f"--benchmark_min_time={calls}x", "--benchmark_format=json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    run = json.loads(proc.stdout)["benchmarks"][0]
    assert run["time_unit"] == "ms", run
    return float(run["real_time"])


def c_app(binary: Path, vmfb: Path, x: Path, calls: int, device: str) -> tuple[float, float]:
    """The C app's (mean, median) ms per call."""
    proc = subprocess.run([str(binary), "--device", device, "--repeat", str(calls), str(vmfb), str(x)], capture_output=True, text=True, check=True)
    m = re.search(r"median ([0-9.]+) ms, mean ([0-9.]+) ms", proc.stderr)
    assert m, proc.stderr
    return float(m.group(2)), float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path, help="a CPU artifact of the digits CNN [default: compile one at batch 1]")
    ap.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="app_latency."))
    try:
        from examples.digits import build

        paths = build(REPO / "out" / "digits")
        vmfb = args.artifact
        if vmfb is None:
            vmfb = work / "digits_cnn.vmfb"
            subprocess.run([str(BIN / "optc"), "compile", str(paths["cnn"]), "-o", str(vmfb)], check=True, capture_output=True)
        with np.load(paths["test"], allow_pickle=False) as test:
            images = test["x"]
        from optc.metadata import optc_info, read

        reflection = read(vmfb)
        batch = optc_info(reflection)["inputs"][0]["shape"][0]
        device = reflection.get("optc.device", "local-task")  # as the C app: local-task for an artifact from before optc.device
        x = work / "x.npy"
        np.save(x, images[:batch])
        build_proc = subprocess.run(["bash", str(REPO / "scripts" / "build_c_app.sh")], cwd=REPO, capture_output=True, text=True, check=True)
        binary = REPO / build_proc.stdout.strip().splitlines()[-1]
        bench, app_mean, app_median = [], [], []
        for r in range(args.rounds):
            bench.append(benchmark_module(vmfb, x, args.calls, device))
            mean, median = c_app(binary, vmfb, x, args.calls, device)
            app_mean.append(mean)
            app_median.append(median)
            print(f"round {r + 1}: iree-benchmark-module {bench[-1]:.4f} ms, C app {mean:.4f} ms (median call {median:.4f} ms)", file=sys.stderr)
        b, a = statistics.median(bench), statistics.median(app_mean)
        print(f"artifact {vmfb} (batch {batch}), {device}, {args.calls} calls x {args.rounds} rounds, medians over rounds of the mean per call:")
        print("| runner | ms per call | ms per image |")
        print("|---|---|---|")
        print(f"| iree-benchmark-module | {b:.4f} | {b / batch:.4f} |")
        print(f"| C app (classify --repeat) | {a:.4f} | {a / batch:.4f} |")
        print(f"C app / iree-benchmark-module: {a / b:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
