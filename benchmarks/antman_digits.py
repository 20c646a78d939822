"""antman's accuracy curve on the digits LSTM: top-1 at 4x, 8x and 16x fewer
recurrent-layer (hidden-to-hidden) MACs at antman's default options, fitted on --calib with passes over
the recurrence, and with --admm also antman,admm int8 (admm re-solving and
quantizing antman's published factors). The first layer's input matrix
(512×8) is skipped by antman itself from 8x on (no rank >= 1 reaches the cut);
at 4x it becomes rank 1.

    .venv/bin/python benchmarks/antman_digits.py [--out out/digits] [--reductions 4,8,16] [--passes N] [--admm] [--no-dense]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.digits_accuracy import compile_one  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("out/digits"))
    ap.add_argument("--reductions", default="4,8,16")
    ap.add_argument("--passes", type=int, default=None, help="antman.passes (default: antman's own)")
    ap.add_argument("--admm", action="store_true", help="also antman,admm int8 at each reduction")
    ap.add_argument("--skip", default="", help="antman.skip patterns")
    ap.add_argument("--no-dense", action="store_true", help="leave out the dense compile")
    args = ap.parse_args()
    from examples.digits import build

    data = build(args.out)
    runs = [] if args.no_dense else [("dense", "", [])]
    for r in args.reductions.split(","):
        opts = [f"antman.reduction={r}"] + ([f"antman.passes={args.passes}"] if args.passes else []) + ([f"antman.skip={args.skip}"] if args.skip else [])
        runs.append((f"antman {r}x", "antman", opts))
        if args.admm:
            runs.append((f"antman {r}x,admm int8", "antman,admm", opts + ["admm.quant=int8", "admm.passes=2"]))
    print("| methods | top-1 | Δ top-1 (pts) | hidden-to-hidden MACs | all LSTM MACs | artifact bytes |")
    print("|---|---|---|---|---|---|")
    for label, plugins, opts in runs:
        out = args.out / f"lstm-{label.replace(',', '-').replace(' ', '-')}.vmfb"
        rep = compile_one(data["lstm"], plugins, opts, data, out)
        acc = rep["accuracy"]
        cells = []
        for prefix in ("lstm.weight_hh", "lstm."):
            rows = [r for r in rep["layers"] if r["layer"].startswith(prefix)]
            before, after = sum(r["macs_before"] for r in rows), sum(r["macs_after"] for r in rows)
            cells.append(f"{before:,} -> {after:,} ({before / after:.2f}x)")
        print(f"| {label} | {100 * acc['artifact']:.2f}% | {100 * (acc['artifact'] - acc['original']):+.2f} "
              f"| {' | '.join(cells)} | {rep['artifact']['bytes']:,} |", flush=True)


if __name__ == "__main__":
    main()
