"""Per-dispatch CPU profile of a model's IREE compile (dense, or compressed with
--plugins/--opt): which dispatches take the time, and how many dispatches one
inference launches.

Compiles MODEL with the cpu target (default flags, plus any --flag), runs it
under `iree-benchmark-module` with HAL host-execution profiling, and prints
the top dispatches from `iree-profile statistics`.

    .venv/bin/python benchmarks/profile_dispatches.py examples.reference_models:lstm [--threads 2] [--top 15] [--flag=...]
        [--set "default with winograd >= 14x14"]   # a flag set of cpu_flags.py
        [--plugins bcr --opt bcr.block=512 ...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROW = re.compile(r"host_execute (\S+)\s+count=(\d+) total=([\d.]+) (ms|us|ns|s)")
UNIT = {"s": 1e3, "ms": 1.0, "us": 1e-3, "ns": 1e-6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repetitions", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--flag", action="append", default=[], help="extra IREE compiler flag (repeatable)")
    ap.add_argument("--set", dest="flag_set", default="", help="compile with this flag set of cpu_flags.py instead of the defaults")
    ap.add_argument("--plugins", default="", help="compression methods to apply first, as for optc compile")
    ap.add_argument("--opt", action="append", default=[], help="method option M.FIELD=V (repeatable)")
    args = ap.parse_args()

    import numpy as np

    from optc.api import MethodContext, parse_assignments
    from optc.driver import apply_methods, load_and_lower, select
    from optc.targets.cpu import CpuOptions, CpuTarget, winograd_convs

    methods = [p for p in args.plugins.split(",") if p]
    sel = select(methods, "cpu", parse_assignments(args.opt, "--opt"), {})
    _, program = load_and_lower(args.model, False, (), args.batch)
    apply_methods(program, sel.methods, MethodContext())
    if args.flag_set:
        from cpu_flags import FLAG_SETS  # this directory is on sys.path when run as a script

        chosen = FLAG_SETS[args.flag_set]
        opts = replace(chosen, flags=(*chosen.flags, *args.flag))
    else:
        opts = CpuOptions(flags=tuple(args.flag))
    art = CpuTarget().compile(program, opts)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "m.vmfb").write_bytes(art.vmfb)
        cmd = [str(bin_dir / "iree-benchmark-module"), f"--module={t / 'm.vmfb'}", "--device=local-task", "--function=main",
               f"--task_topology_group_count={args.threads}", f"--benchmark_repetitions={args.repetitions}",
               "--device_profiling_mode=host-execution", f"--device_profiling_output={t / 'p.ireeprof'}"]
        for i, x in enumerate(program.example_inputs):
            np.save(t / f"in{i}.npy", x)
            cmd.append(f"--input=@{t / f'in{i}.npy'}")
        bench = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        stats = subprocess.run([str(bin_dir / "iree-profile"), "statistics", str(t / "p.ireeprof")],
                               capture_output=True, text=True, check=True).stdout
    median = next((ln for ln in bench.splitlines() if "real_time_median" in ln), "").split()
    rows = []
    for m in ROW.finditer(stats):
        name, count, total, unit = m.group(1), int(m.group(2)), float(m.group(3)), m.group(4)
        rows.append((name, count, total * UNIT[unit]))
    invocations = next((int(x) for x in re.findall(r"dispatch\s+count=(\d+)", stats)), 0)
    total = sum(r[2] for r in rows)
    winograd = len(winograd_convs(program, opts.winograd)) if opts.fast else 0
    print(f"{args.model}, batch {args.batch}, {args.threads} threads; {winograd} convs on Winograd; "
          f"flags: {' '.join(CpuTarget().flags_for(program, opts))}")
    print(f"iree-benchmark-module median: {' '.join(median[1:3]) if median else '?'}")
    print(f"{len(rows)} distinct dispatches, {invocations} dispatch launches in the profiled runs")
    print("\n| dispatch | launches | total ms | share |")
    print("|---|---|---|---|")
    for name, count, ms in sorted(rows, key=lambda r: -r[2])[: args.top]:
        print(f"| {name[:90]} | {count} | {ms:.2f} | {100 * ms / total:.1f}% |")


if __name__ == "__main__":
    main()
