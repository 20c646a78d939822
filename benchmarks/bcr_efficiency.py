"""bcr's realized efficiency (speedup ÷ FLOP reduction) at bcr's default options
(col_keep 0.5, row_keep 0.5: 4× fewer MACs in every pruned layer) for each
block size asked: the reference LSTM (all gate matrices), the BERT-shaped
encoder (every linear layer but the 2-way head) and ResNet-18 (every conv and
linear layer whose rows the block divides), cpu target, with `optc bench`
(eager, dense and compressed interleaved, each in its own process). Prints a
markdown table, one row per model × block × batch.

    .venv/bin/python benchmarks/bcr_efficiency.py [--blocks 16,32,64] [--col-group 0] [--threads 2] [--batches 1,32]

--col-group sets bcr.col_group (rows sharing one column set; 0 = the whole
layer, bcr's default; equal to the block = GRIM's own columns per block).
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

SKIP = {"lstm": "fc.weight", "bert": "head.weight", "resnet18": "fc.weight"}  # the classifier heads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--min-rounds", type=int, default=20)
    ap.add_argument("--models", default=",".join(SKIP))
    ap.add_argument("--blocks", default="16,32,64", help="bcr.block values to run")
    ap.add_argument("--col-group", type=int, default=None, help="bcr.col_group (default: bcr's own default)")
    ap.add_argument("--min-seconds", type=float, default=10.0)
    args = ap.parse_args()
    optc = shutil.which("optc", path=str(Path(sys.executable).parent)) or "optc"
    print("| model | block | col_group | batch | eager ms | dense ms | bcr ms | bcr vs dense | FLOP reduction (model) | pruned-layer FLOP reduction | efficiency |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for block in [int(b) for b in args.blocks.split(",")]:
            for batch in [int(b) for b in args.batches.split(",")]:
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "bench.json"
                    opts = [f"bcr.block={block}", f"bcr.skip={SKIP[model]}"]
                    if args.col_group is not None:
                        opts.append(f"bcr.col_group={args.col_group}")
                    cmd = [optc, "bench", f"examples.reference_models:{model}", "--plugins", "bcr", "--batch", str(batch),
                           "--threads", str(args.threads), "--min-rounds", str(args.min_rounds), "--min-seconds", str(args.min_seconds),
                           "--json", str(out), *(a for o in opts for a in ("--opt", o))]
                    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
                    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
                    rep = json.loads(out.read_text())
                b = rep["bench"]
                lat = {k: v["median"] for k, v in b["latency_ms"].items()}
                pruned = [r for r in rep["layers"] if "bcr" in r["methods"]]
                layer_cut = sum(r["macs_before"] for r in pruned) / sum(r["macs_after"] for r in pruned)
                group = args.col_group if args.col_group is not None else "default"
                print(
                    f"| {model} | {block} | {group} | {batch} | {lat['eager']:.2f} | {lat['dense']:.2f} | {lat['compressed']:.2f} "
                    f"| {b['speedup']['compressed_vs_dense']:.2f}x | {b['flop_reduction']:.2f}x | {layer_cut:.2f}x "
                    f"| {b['realized_efficiency']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
