"""Accuracy and size of bcr / bcr+admm / bcr+admm+int8 on the digits CNN and LSTM
(or, with ``--methods penni``, of penni / penni+admm+int8 on the digits CNN).

Trains the two example models (examples/digits.py) if needed, compiles each
configuration with `optc compile --calib … --eval …` for the cpu target, and
prints top-1 on the held-out split, the weight reduction of the pruned layers,
and the artifact size against the dense compile.

    .venv/bin/python benchmarks/digits_accuracy.py [--out out/digits] [--methods bcr|penni]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Per model: the bcr options (4x fewer weights in the pruned layers) and admm's.
CONFIGS = {
    "cnn": ["bcr.skip=features.0.weight,classifier.3.weight", "bcr.block=8", "bcr.col_keep=0.25", "bcr.row_keep=1"],
    # columns only, pruned hard: GRIM's own columns per block keep 96.39% here against 90.83% shared (README)
    "lstm": ["bcr.skip=lstm.weight_ih_l0,fc.weight", "bcr.block=8", "bcr.col_keep=0.25", "bcr.row_keep=1", "bcr.col_group=8", "admm.passes=2"],
}
# penni: 4 basis kernels per 3×3 conv (≥ 2× fewer conv MACs), coefficients fit sequentially on --calib.
PENNI_CONFIGS = {"cnn": ["penni.bases=4"]}
PENNI_RUNS = {
    "dense": ("", []),
    "penni": ("penni", []),
    "penni,admm int8": ("penni,admm", ["admm.quant=int8"]),
}
RUNS = {
    "dense": ("", []),
    "bcr": ("bcr", []),
    "bcr,admm": ("bcr,admm", []),
    "bcr,admm int8": ("bcr,admm", ["admm.quant=int8"]),
}


def compile_one(model: Path, plugins: str, opts: list[str], data: dict[str, Path], out: Path) -> dict:
    optc = shutil.which("optc", path=str(Path(sys.executable).parent)) or "optc"
    cmd = [optc, "compile", str(model), "-o", str(out), "--calib", str(data["calib"]), "--eval", str(data["test"])]
    if plugins:
        cmd += ["--plugins", plugins]
    for o in opts:
        if o.split(".")[0] in plugins.split(","):
            cmd += ["--opt", o]
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    return json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("out/digits"))
    ap.add_argument("--methods", choices=("bcr", "penni"), default="bcr")
    args = ap.parse_args()
    from examples.digits import build

    data = build(args.out)
    if args.methods == "penni":
        return penni_table(data, args.out)
    print("| model | methods | top-1 | Δ top-1 (pts) | pruned-layer weights | artifact bytes | smaller |")
    print("|---|---|---|---|---|---|---|")
    for name, model_opts in CONFIGS.items():
        dense_bytes = None
        for label, (plugins, extra) in RUNS.items():
            rep = compile_one(data[name], plugins, model_opts + extra, data, args.out / f"{name}-{label.replace(',', '-').replace(' ', '-')}.vmfb")
            acc = rep["accuracy"]
            pruned = [r for r in rep["layers"] if "bcr" in r["methods"]]
            before = sum(r["params_before"] for r in pruned)
            after = sum(r["params_after"] for r in pruned)
            size = rep["artifact"]["bytes"]
            dense_bytes = dense_bytes or size
            weights = f"{before:,} -> {after:,} ({before / after:.2f}x)" if pruned else "-"
            print(
                f"| {name} | {label} | {100 * acc['artifact']:.2f}% | {100 * (acc['artifact'] - acc['original']):+.2f} "
                f"| {weights} | {size:,} | {dense_bytes / size:.2f}x |",
                flush=True,
            )


def penni_table(data: dict[str, Path], out: Path) -> None:
    print("| model | methods | top-1 | Δ top-1 (pts) | conv MACs | artifact bytes | smaller |")
    print("|---|---|---|---|---|---|---|")
    for name, model_opts in PENNI_CONFIGS.items():
        dense_bytes = None
        for label, (plugins, extra) in PENNI_RUNS.items():
            rep = compile_one(data[name], plugins, model_opts + extra, data, out / f"{name}-{label.replace(',', '-').replace(' ', '-')}.vmfb")
            acc = rep["accuracy"]
            convs = [r for r in rep["layers"] if r["kind"].endswith("conv2d")]
            before, after = sum(r["macs_before"] for r in convs), sum(r["macs_after"] for r in convs)
            size = rep["artifact"]["bytes"]
            dense_bytes = dense_bytes or size
            print(
                f"| {name} | {label} | {100 * acc['artifact']:.2f}% | {100 * (acc['artifact'] - acc['original']):+.2f} "
                f"| {before:,} -> {after:,} ({before / after:.2f}x) | {size:,} | {dense_bytes / size:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
