"""bcr's realized efficiency (speedup ÷ FLOP reduction) at 4× fewer FLOPs in the
pruned layers: the reference LSTM (all gate matrices) and the reference
BERT-shaped encoder (every linear layer but the 2-way head), batch 1 and 32,
cpu target, with `optc bench` (eager, dense and compressed interleaved, each in its own
process). Prints a markdown table.

    .venv/bin/python benchmarks/bcr_efficiency.py [--block 0] [--threads 2] [--batches 1,32] [--min-rounds 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# 4x fewer MACs in every pruned layer: keep a quarter of each block's columns, every row.
# One block per layer (block=0) by default: IREE 3.13 runs a batch_matmul over
# several blocks ~1.6x slower than one matmul of the same FLOPs (each block packs
# its own gathered input); --block 512 shows the multi-block numbers.
SKIP = {"lstm": "fc.weight", "bert": "head.weight"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--min-rounds", type=int, default=20)
    ap.add_argument("--models", default=",".join(SKIP))
    ap.add_argument("--block", type=int, default=0, help="bcr.block (0: one block per layer)")
    ap.add_argument("--min-seconds", type=float, default=10.0)
    args = ap.parse_args()
    optc = shutil.which("optc", path=str(Path(sys.executable).parent)) or "optc"
    print("| model | batch | eager ms | dense ms | bcr ms | bcr vs dense | FLOP reduction (model) | pruned-layer FLOP reduction | efficiency |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for batch in [int(b) for b in args.batches.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "bench.json"
                cmd = [optc, "bench", f"examples.reference_models:{model}", "--plugins", "bcr", "--batch", str(batch),
                       "--threads", str(args.threads), "--min-rounds", str(args.min_rounds), "--min-seconds", str(args.min_seconds),
                       "--json", str(out), "--opt", f"bcr.block={args.block}", "--opt", "bcr.col_keep=0.25", "--opt", "bcr.row_keep=1",
                       "--opt", f"bcr.skip={SKIP[model]}"]
                print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
                subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
                rep = json.loads(out.read_text())
            b = rep["bench"]
            lat = {k: v["median"] for k, v in b["latency_ms"].items()}
            pruned = [r for r in rep["layers"] if "bcr" in r["methods"]]
            layer_cut = sum(r["macs_before"] for r in pruned) / sum(r["macs_after"] for r in pruned)
            print(
                f"| {model} | {batch} | {lat['eager']:.2f} | {lat['dense']:.2f} | {lat['compressed']:.2f} "
                f"| {b['speedup']['compressed_vs_dense']:.2f}x | {b['flop_reduction']:.2f}x | {layer_cut:.2f}x "
                f"| {b['realized_efficiency']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
