"""The sim target's goals (issue 15), from one run, as markdown:

- partition K=4 on the digits CNN's fully connected layers (+ admm on --calib):
  simulated cycles of those layers on 4 accelerators vs the dense layers on one
  and split over 4 with the interconnect; top-1 before and after;
- admm's N:M 2:4 masks: simulated cycles of the sparse layers vs dense (ws array
  with sparsity support);
- the wall time of simulating the ResNet-18-shaped reference model.

    .venv/bin/python -m examples.digits && .venv/bin/python benchmarks/sim_goals.py [--out out/sim_goals]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DIGITS = Path("out/digits")
FC = "classifier."


def compile_(out: Path, name: str, *args: str) -> dict:
    vmfb = out / f"{name}.vmfb"
    optc = Path(sys.executable).parent / "optc"
    subprocess.run([str(optc), "compile", "--quiet", "--target", "sim", *args, str(DIGITS / "digits_cnn.pt2"), "-o", str(vmfb)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(vmfb.with_suffix(".json").read_text())


def cycles(report: dict, select) -> int:
    return sum(r["cycles"] for r in report["simulation"]["layers"] if r["layer"] and select(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/sim_goals"))
    parser.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 timing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calib, test = ["--calib", str(DIGITS / "digits_calib.npz")], ["--eval", str(DIGITS / "digits_test.npz")]
    four = ["--target-opt", "sim.accelerators=4"]
    dense1 = compile_(args.out, "dense1", *test)
    dense4 = compile_(args.out, "dense4", *four)
    part4 = compile_(args.out, "part4", "--plugins", "partition,admm", "--opt", "partition.parts=4", "--opt", "partition.skip=features.*", *calib, *test, *four)
    nm = compile_(args.out, "nm24", "--plugins", "admm", "--opt", "admm.prune=nm", "--opt", "admm.skip=features.0.weight", *calib, *test)  # 9 inputs: no 4-groups

    parted = {c["layer"] for m in part4["methods"] if m["name"] == "partition" for c in m["changes"] if c["status"] == "changed"}
    in_parted = lambda r: r["layer"] in parted  # noqa: E731
    in_fc = lambda r: r["layer"].startswith(FC)  # noqa: E731
    d1, d4, p4 = (cycles(r, in_parted) for r in (dense1, dense4, part4))
    f1, f4, pf4 = (cycles(r, in_fc) for r in (dense1, dense4, part4))
    print(f"partitioned layers: {', '.join(sorted(parted))}\n")
    print("| digits CNN, edge32 (32×32 ws, 500 MHz) | dense, 1 accel | dense split over 4 | partition K=4 + admm, 4 accels | vs 1 accel | vs split |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| cycles of the partitioned FC layers | {d1:,} | {d4:,} | {p4:,} | {d1 / p4:.2f}× | {d4 / p4:.2f}× |")
    print(f"| cycles of all FC layers | {f1:,} | {f4:,} | {pf4:,} | {f1 / pf4:.2f}× | {f4 / pf4:.2f}× |")
    acc, pacc = dense1["accuracy"], part4["accuracy"]
    print(f"| top-1 (artifact, 360 test digits) | {100 * acc['artifact']:.2f}% | | {100 * pacc['artifact']:.2f}% | {100 * (pacc['artifact'] - acc['artifact']):+.2f} pt | |")

    sparse = {r["layer"] for r in nm["simulation"]["layers"] if r["nm"]}
    s_dense = cycles(dense1, lambda r: r["layer"] in sparse)
    s_nm = cycles(nm, lambda r: r["layer"] in sparse)
    print(f"\n| admm 2:4, edge32 ws with sparsity support | dense | 2:4 | ratio |\n|---|---:|---:|---:|")
    print(f"| cycles of the {len(sparse)} sparse layers | {s_dense:,} | {s_nm:,} | {s_dense / s_nm:.2f}× |")
    print(f"| top-1 (artifact) | {100 * acc['artifact']:.2f}% | {100 * nm['accuracy']['artifact']:.2f}% | |")

    if not args.no_resnet:
        from optc.api import build_options
        from optc.driver import load_and_lower
        from optc.targets.sim import SimOptions, simulate

        _, program = load_and_lower("examples.reference_models:resnet18", False, ())
        start = time.perf_counter()
        report = simulate(program, build_options("sim", SimOptions, {}))
        seconds = time.perf_counter() - start
        sampled = sum("sampled" in r for r in report["layers"])
        print(f"\nResNet-18-shaped (1×3×224×224), edge32 defaults: {len(report['layers'])} contractions simulated in {seconds:.1f} s "
              f"({sampled} sampled), {report['totals']['cycles']:,} cycles")


if __name__ == "__main__":
    main()
