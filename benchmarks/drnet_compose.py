"""drnet composed with a per-layer method: average MACs per image and top-1 on
the multi-scale digits for dense, drnet, the method alone and drnet + the method
(which compresses every resolution variant alike, so the savings multiply).

    python -m examples.digits --out out/ms --multiscale
    python benchmarks/drnet_compose.py out/ms [--method bcr] [--opt bcr.row_keep=1 ...] [--drnet-opt drnet.resolutions=32,24,16]

Each configuration is one ``optc compile --eval`` (cpu target); the table is read
from their JSON reports. MACs per image: the report's MACs over the batch for a
static model, drnet's measured average over the --eval images (predictor and
resizes included) for a dynamic one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def compile_one(folder: Path, name: str, plugins: list[str], opts: list[str]) -> dict:
    out = folder / f"compose_{name}.vmfb"
    cmd = [str(Path(sys.executable).parent / "optc"), "compile", "--quiet", str(folder / "multiscale_cnn.pt2"), "-o", str(out),
           "--calib", str(folder / "multiscale_calib.npz"), "--eval", str(folder / "multiscale_test.npz")]
    if plugins:
        cmd += ["--plugins", ",".join(plugins)]
    for o in opts:
        if o.split(".", 1)[0] in plugins:
            cmd += ["--opt", o]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out.with_suffix(".json").read_text())


def macs_per_image(report: dict) -> float:
    acc = report["accuracy"]
    if "drnet" in acc:
        return acc["drnet"]["macs_per_image"]
    batch = report["inputs"][0]["shape"][0] if report.get("inputs") else 1
    return report["totals"]["macs_after"] / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where python -m examples.digits --multiscale wrote its files")
    parser.add_argument("--method", default="bcr", help="the per-layer method(s) composed with drnet, e.g. bcr or bcr,admm")
    parser.add_argument("--opt", action="append", default=[], help="an --opt for the method(s), repeatable")
    parser.add_argument("--drnet-opt", action="append", default=["drnet.resolutions=32,24,16"], help="an --opt for drnet")
    args = parser.parse_args()
    method = args.method.split(",")
    opts = args.opt + args.drnet_opt
    configs = {"dense": [], "drnet": ["drnet"], args.method: method, f"drnet,{args.method}": ["drnet"] + method}
    done = {name: compile_one(args.folder, name.replace(",", "_"), plugins, opts) for name, plugins in reversed(configs.items())}  # the composition first: it is what may fail
    reports = {name: done[name] for name in configs}
    dense = macs_per_image(reports["dense"])
    print(f"\n{'methods':24}{'MACs/image':>14}{'vs dense':>10}{'top-1':>9}{'Δ pts':>8}")
    for name, r in reports.items():
        m, top1 = macs_per_image(r), r["accuracy"]["artifact"]
        print(f"{name:24}{m:>14,.0f}{dense / m:>9.2f}x{100 * top1:>8.2f}%{100 * (top1 - r['accuracy']['original']):>+8.2f}")
    print(f"\nopts: {' '.join(opts)}")


if __name__ == "__main__":
    main()
