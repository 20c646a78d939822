"""``optc bench``: dense IREE vs compressed IREE vs PyTorch eager, in one process,
with the same thread count, warmed up, timed interleaved (A B C A B C …) so
machine noise hits all three alike; medians, not single times."""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from optc.errors import InputError


def passive_openmp() -> str:
    """Make PyTorch's OpenMP workers sleep instead of spin between parallel
    regions, and return the policy in force. Next to IREE's task workers on a
    small machine, spinning made eager 40x slower (LSTM: 560 ms median vs 12 ms
    passive). Takes effect only before torch is first imported."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "default")


BURST = 3  # runs per runner per round; the first after a switch is not timed


@dataclass
class Timing:
    samples: list[float]  # seconds

    def as_dict(self) -> dict[str, float]:
        ms = [s * 1e3 for s in self.samples]
        return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "samples": len(ms)}


def set_threads(threads: int) -> None:
    """Same thread count for PyTorch and IREE's local-task executor (must run
    before the first IREE device of the process is created)."""
    import iree.runtime as rt
    import torch

    if threads <= 0:
        raise InputError(f"--threads {threads}: must be a positive integer")
    torch.set_num_threads(threads)
    rt.flags.parse_flags(f"--task_topology_group_count={threads}")


def rebatch(inputs: Sequence[np.ndarray], batch: int) -> tuple[np.ndarray, ...]:
    """Replace the first (batch) dimension of every input by ``batch``."""
    if batch <= 0:
        raise InputError(f"--batch {batch}: must be a positive integer")
    out = []
    for x in inputs:
        if x.ndim == 0:
            raise InputError("--batch needs inputs with a leading batch dimension")
        reps = -(-batch // x.shape[0])
        out.append(np.ascontiguousarray(np.concatenate([x] * reps, axis=0)[:batch]))
    return tuple(out)


def time_interleaved(
    runners: dict[str, Callable[[], Any]],
    warmup: int = 3,
    min_rounds: int = 20,
    min_seconds: float = 2.0,
    max_rounds: int = 1000,
    burst: int = BURST,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Timing]:
    """Warm every runner up, then time them in interleaved rounds until there are
    at least ``min_rounds`` rounds and ``min_seconds`` of total work.

    In each round every runner runs ``burst`` times back to back and the first
    run after the switch is not recorded; the order rotates each round (A B C,
    B C A, C A B …). Why: PyTorch's OpenMP workers keep spinning after eager
    returns, and on a 2-core machine that slowed whichever runner came next by
    ~20% (measured: ResNet-18's dense and compressed IREE artifacts, identical
    convs, timed 42 vs 36 ms in a fixed A B C order)."""
    if burst < 2:
        raise ValueError("burst must be >= 2 (the first run after a switch is discarded)")
    names = list(runners)
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in runners}
    start = time.perf_counter()
    rounds = 0
    next_report = start + 5.0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < min_seconds):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            fn = runners[name]
            fn()  # absorbs the switch
            for _ in range(burst - 1):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        rounds += 1
        if time.perf_counter() > next_report:
            progress(f"timing: {rounds} rounds")
            next_report += 5.0
    return {k: Timing(v) for k, v in samples.items()}


def speedups(latency: dict[str, dict[str, float]]) -> dict[str, float]:
    """Ratios of medians: how many times faster the first is than the second."""
    med = {k: v["median"] for k, v in latency.items()}
    out = {"dense_vs_eager": med["eager"] / med["dense"]}
    if "compressed" in med:
        out["compressed_vs_dense"] = med["dense"] / med["compressed"]
        out["compressed_vs_eager"] = med["eager"] / med["compressed"]
    return out


def format_table(bench: dict[str, Any]) -> str:
    """The table `optc bench` prints."""
    lat = bench["latency_ms"]
    lines = [f"batch {bench['batch']}, {bench['threads']} thread(s), {bench['rounds']} interleaved rounds of {BURST} runs each (first untimed)", ""]
    lines.append(f"{'':12}{'median ms':>11}{'min ms':>10}{'max ms':>10}")
    for name in ("eager", "dense", "compressed"):
        if name in lat:
            t = lat[name]
            label = {"eager": "torch eager", "dense": "IREE dense", "compressed": "IREE compr."}[name]
            lines.append(f"{label:12}{t['median']:>11.3f}{t['min']:>10.3f}{t['max']:>10.3f}")
    sp = bench["speedup"]
    lines.append("")
    lines.append(f"dense IREE vs eager       {sp['dense_vs_eager']:.2f}x")
    if "compressed_vs_dense" in sp:
        lines.append(f"compressed vs dense       {sp['compressed_vs_dense']:.2f}x")
        lines.append(f"compressed vs eager       {sp['compressed_vs_eager']:.2f}x")
        lines.append(f"FLOP reduction            {bench['flop_reduction']:.2f}x")
        lines.append(f"realized efficiency       {bench['realized_efficiency']:.2f}  (speedup ÷ FLOP reduction)")
    p, a = bench["params"], bench["artifact_bytes"]
    if "compressed" in p:
        lines.append(f"parameters                {p['dense']:,} -> {p['compressed']:,}")
        lines.append(f"artifact bytes            {a['dense']:,} -> {a['compressed']:,}")
    else:
        lines.append(f"parameters                {p['dense']:,}")
        lines.append(f"artifact bytes            {a['dense']:,}")
    return "\n".join(lines)
