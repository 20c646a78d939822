"""Build the reference table: the four reference models, dense IREE vs PyTorch
eager, and each with `lowrank` at the rank that cuts its linear layers' FLOPs 4x.

Each model runs `optc bench` in its own process (thread settings are
process-wide), at batch 1 with 2 threads by default, and the table is printed
as markdown. Run from the repository root:

    .venv/bin/python benchmarks/reference_table.py [--models resnet18,bert] [--threads 2] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = ("resnet18", "mobilenetv2", "lstm", "bert")
REPO = Path(__file__).resolve().parents[1]


def bench(model: str, threads: int, batch: int, min_seconds: float, out: Path) -> dict:
    optc = Path(sys.executable).parent / "optc"
    cmd = [
        str(optc), "bench", f"examples.reference_models:{model}",
        "--plugins", "lowrank", "--opt", "lowrank.reduction=4",
        "--batch", str(batch), "--threads", str(threads), "--min-seconds", str(min_seconds),
        "--json", str(out),
    ]
    print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return json.loads(out.read_text())


def row(model: str, r: dict) -> str:
    b = r["bench"]
    lat, sp = b["latency_ms"], b["speedup"]
    lin = [x for x in r["layers"] if x["kind"] in ("matmul", "batch_matmul")]
    lin_before = sum(x["macs_before"] for x in lin)
    lin_after = sum(x["macs_after"] for x in lin)
    cells = [
        model,
        f"{lat['eager']['median']:.2f}",
        f"{lat['dense']['median']:.2f}",
        f"**{sp['dense_vs_eager']:.2f}**",
        f"{lat['compressed']['median']:.2f}",
        f"{sp['compressed_vs_dense']:.2f}",
        f"{lin_before / lin_after:.2f}" if lin_after else "-",
        f"{b['flop_reduction']:.2f}",
        f"{b['realized_efficiency']:.2f}",
        f"{b['params']['dense'] / 1e6:.2f}M → {b['params']['compressed'] / 1e6:.2f}M",
        f"{b['artifact_bytes']['dense'] / 2**20:.1f} → {b['artifact_bytes']['compressed'] / 2**20:.1f} MiB",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            rows.append(row(model, bench(model, args.threads, args.batch, args.min_seconds, Path(tmp) / f"{model}.json")))
    print(f"batch {args.batch}, {args.threads} threads; latency = median ms of interleaved rounds; "
          "ratio = eager ÷ dense IREE (≥ 1 means IREE is faster)\n")
    print("| model | eager ms | dense IREE ms | eager÷dense | lowrank ms | lowrank speedup vs dense | linear-layer FLOP cut | model FLOP cut | realized efficiency | params | artifact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
