"""What a compile costs: wall time, CPU time and peak memory of `optc compile`
on the models of issues 8 and 10, each in its own process, as a markdown table.

    .venv/bin/python benchmarks/compile_cost.py --out out/compile_cost [--only big_linear,vgg]

Max RSS is the kernel's (``wait4``): the largest of optc and its children
(``iree-compile``), as ``/usr/bin/time -v`` reports it. The floor is the tiny
``examples.models:mlp`` compile (the interpreter with torch, torch-mlir and IREE
loaded); "(RSS - floor) / weights" says how many copies of the weights a compile
holds beyond that. "(RSS - dense compile) / weights" is what the methods and
their calibration add to the dense compile of the same model (which holds the
model, IREE's artifact and its loaded module: IREE's own share). Run it on a
quiet machine: wall time is only comparable then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPTC = [sys.executable, "-m", "optc.cli"]


@dataclass
class Case:
    key: str
    model: str
    methods: str
    args: list[str]
    calib: bool = False


CASES = [
    Case("floor", "examples.models:mlp", "dense", []),
    Case("big_linear", "examples.models:big_linear", "lowrank reduction=4", ["--plugins", "lowrank", "--opt", "lowrank.reduction=4"]),
    Case("vgg", "examples.reference_models:vgg_classifier", "lowrank reduction=4", ["--plugins", "lowrank", "--opt", "lowrank.reduction=4"]),
    Case("resnet18_dense", "examples.reference_models:resnet18", "dense", []),
    Case("resnet18", "examples.reference_models:resnet18", "bcr,admm (calib 32)", ["--plugins", "bcr,admm"], calib=True),
]


def calibration_file(path: Path, shape: tuple[int, ...], samples: int = 32) -> Path:
    """``samples`` seeded random inputs of ``shape`` (batch dim excluded), as ``x``."""
    x = np.random.default_rng(0).standard_normal((samples, *shape)).astype(np.float32)
    np.savez(path, x=x)
    return path


def measure(cmd: list[str]) -> dict[str, float]:
    """Wall seconds, user+sys CPU seconds and max RSS (MiB) of one process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out.decode(errors='replace')[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "compile_cost")
    ap.add_argument("--only", default="", help="comma-separated case keys (floor is always run): " + ", ".join(c.key for c in CASES))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    only = {k for k in args.only.split(",") if k} | {"floor"}
    rows = []
    for case in CASES:
        if args.only and case.key not in only:
            continue
        cmd = [*OPTC, "compile", "--quiet", *case.args, case.model, "-o", str(args.out / f"{case.key}.vmfb")]
        if case.calib:  # the input shape of the reference models: 3x224x224
            cmd[len(OPTC) + 2:len(OPTC) + 2] = ["--calib", str(calibration_file(args.out / f"{case.key}_calib.npz", (3, 224, 224)))]
        print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
        m = measure(cmd)
        report = json.loads((args.out / f"{case.key}.json").read_text())
        m["weights_mib"] = report["totals"]["param_bytes_before"] / 2**20
        rows.append((case, m))
    floor = rows[0][1]["rss_mib"]
    dense = {case.model: m["rss_mib"] for case, m in rows if case.methods == "dense"}
    print("| model | methods | wall s | user+sys CPU s | max RSS MiB | weights MiB | RSS / weights | (RSS - floor) / weights | (RSS - dense compile) / weights |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, m in rows:
        ratio = m["rss_mib"] / m["weights_mib"]
        above = (m["rss_mib"] - floor) / m["weights_mib"]
        over_dense = f"{(m['rss_mib'] - dense[case.model]) / m['weights_mib']:.2f}" if case.model in dense and case.methods != "dense" else ""
        print(f"| {case.model} | {case.methods} | {m['wall']:.1f} | {m['cpu']:.1f} | {m['rss_mib']:.0f} | {m['weights_mib']:.1f} | {ratio:.2f} | {above:.2f} | {over_dense} |")
    print(f"\nfloor = {floor:.0f} MiB (`optc compile examples.models:mlp`); load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
