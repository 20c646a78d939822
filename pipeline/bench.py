"""``optc bench``: PyTorch eager and each compiled artifact timed side by side,
each in its own worker process with its runtime's default settings and the
same thread count, warmed up, then timed in interleaved bursts (A B C, B C A,
…) so machine noise hits all alike; medians, not single times.

A worker is a persistent child process (``python -m optc.bench``) that loads
one runner — the model the way the CLI loads it, or one artifact opened on its
target — and then answers "run a burst of N" with the N durations. The parent
waits for each answer before asking the next worker, so only one runs at a
time and they never compete for cores. Nothing is pickled: the parent and a
worker exchange JSON lines, and arrays go through ``.npz`` files read with
``allow_pickle=False``."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from optc import errors
from optc.errors import InputError, OptcError

BURST = 3  # runs per runner per round; the first after a switch is not timed


@dataclass
class Timing:
    samples: list[float]  # seconds

    def as_dict(self) -> dict[str, float]:
        ms = [s * 1e3 for s in self.samples]
        p10, p90 = np.percentile(ms, [10, 90])
        return {
            "median": statistics.median(ms), "p10": float(p10), "p90": float(p90),
            "min": min(ms), "max": max(ms), "samples": len(ms),
        }


class Runner(Protocol):
    def burst(self, n: int) -> list[float]:
        """Run ``n`` times back to back; the duration of each run in seconds."""


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
    runners: dict[str, Runner],
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
    B C A, C A B …). Why: whatever ran right after PyTorch eager looked ~20%
    slower (its OpenMP workers keep spinning for a while after it returns, and
    the caches hold the previous runner's data) — measured in one process on 2
    cores: ResNet-18's dense and compressed IREE artifacts, identical convs,
    42 vs 36 ms in a fixed A B C order."""
    if burst < 2:
        raise ValueError("burst must be >= 2 (the first run after a switch is discarded)")
    names = list(runners)
    for _ in range(warmup):
        for r in runners.values():
            r.burst(1)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    start = time.perf_counter()
    rounds = 0
    next_report = start + 5.0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < min_seconds):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].extend(runners[name].burst(burst)[1:])  # the first absorbs the switch
        rounds += 1
        if time.perf_counter() > next_report:
            progress(f"timing: {rounds} rounds")
            next_report += 5.0
    return {k: Timing(v) for k, v in samples.items()}


class OtherLoad:
    """The share of the machine's CPU time that processes other than the bench's
    own used while it timed: busy time from ``/proc/stat`` (steal included)
    minus the parent's and the workers' CPU time, over all CPUs' time. A busy
    machine makes every timing noisy, and PyTorch eager with its default
    OpenMP spin-waiting most of all (2 cores, 89% used by others: the
    reference LSTM's eager median was 904 ms with the default wait policy and
    30.5 ms with OMP_WAIT_POLICY=PASSIVE, both in their own processes,
    interleaved). ``share`` is None where ``/proc`` is missing."""

    def __init__(self, pids: Sequence[int], proc: Path = Path("/proc")):
        self.pids, self.proc = [os.getpid(), *pids], proc
        self.share: float | None = None

    def _snapshot(self) -> tuple[int, int, int] | None:
        try:
            cpu = [int(x) for x in (self.proc / "stat").read_text().splitlines()[0].split()[1:9]]
            ours = 0
            for pid in self.pids:
                stat = (self.proc / str(pid) / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
                ours += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = cpu
        return sum(cpu), user + nice + system + irq + softirq + steal, ours

    def __enter__(self) -> "OtherLoad":
        self._before = self._snapshot()
        return self

    def __exit__(self, *exc: Any) -> None:
        after = self._snapshot()
        if self._before is not None and after is not None and after[0] > self._before[0]:
            total, busy, ours = (a - b for a, b in zip(after, self._before))
            self.share = min(max((busy - ours) / total, 0.0), 1.0)


@dataclass
class Measured:
    """What one interleaved timing of several runners gave."""

    timings: dict[str, Timing]
    other_cpu_share: float | None  # OtherLoad.share while timing

    @property
    def rounds(self) -> int:
        return len(next(iter(self.timings.values())).samples) // (BURST - 1)

    def load_line(self) -> str | None:
        """One line on how busy the rest of the machine was, or None where unknown."""
        return load_line(self.other_cpu_share)


def load_line(share: float | None) -> str | None:
    if share is None:
        return None
    busy = "; timings are noisy, eager's spin-waiting OpenMP threads most" if share > 0.1 else ""
    return f"other processes used {100 * share:.0f}% of the CPUs while timing{busy}"


def time_workers(runners: Mapping[str, Worker], min_rounds: int, min_seconds: float,
                 progress: Callable[[str], None] = lambda s: None) -> Measured:
    """``time_interleaved`` over worker processes, watching the rest of the machine's load."""
    with OtherLoad([r.pid for r in runners.values()]) as other:
        timings = time_interleaved(dict(runners), min_rounds=min_rounds, min_seconds=min_seconds, burst=BURST, progress=progress)
    return Measured(timings, other.share)


# ---------------------------------------------------------------- workers


class Worker:
    """One runner in its own process (see the module docstring). Start several,
    then ``wait_ready()`` each: they load concurrently."""

    def __init__(self, spec: dict[str, Any], inputs: Sequence[np.ndarray], files: Mapping[str, bytes] | None = None,
                 calls: Sequence[Sequence[np.ndarray]] | None = None):
        """``calls``: the inputs of each call one timed run makes (a pass over an
        ``--eval`` set, in batches); by default a run is one call on ``inputs``."""
        self._tmp = tempfile.TemporaryDirectory(prefix="optc-bench-")
        tmp = Path(self._tmp.name)
        np.savez(tmp / "inputs.npz", *[np.ascontiguousarray(x) for x in inputs])
        if calls is not None:  # input i of every call, stacked: (calls, *shape)
            np.savez(tmp / "calls.npz", *[np.stack([c[i] for c in calls]) for i in range(len(inputs))])
            spec = {**spec, "calls": str(tmp / "calls.npz")}
        for key, data in (files or {}).items():
            (tmp / key).write_bytes(data)
            spec = {**spec, key: str(tmp / key)}
        spec = {**spec, "inputs": str(tmp / "inputs.npz"), "outputs": str(tmp / "outputs.npz")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "optc.bench"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._send(spec)
        self._hello: dict[str, Any] | None = None

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"bench worker {self.proc.pid} exited ({code}) without answering; its stderr is above")
        reply = json.loads(line)
        if "error" in reply:
            raise getattr(errors, reply.get("kind", ""), OptcError)(reply["error"])
        return reply

    def wait_ready(self) -> "Worker":
        if self._hello is None:
            self._hello = self._receive()
        return self

    @property
    def pid(self) -> int:
        """The process the runner runs in, as the worker itself reports it."""
        return int(self.wait_ready()._hello["pid"])  # type: ignore[index]

    @property
    def description(self) -> str:
        """How this runner is timed, for the report."""
        return str(self.wait_ready()._hello["description"])  # type: ignore[index]

    def outputs(self) -> list[np.ndarray]:
        """The runner's outputs on the inputs, from its first run."""
        self.wait_ready()
        with np.load(Path(self._tmp.name) / "outputs.npz", allow_pickle=False) as f:
            return [f[f"arr_{i}"] for i in range(len(f.files))]

    def burst(self, n: int) -> list[float]:
        self.wait_ready()
        self._send({"op": "burst", "n": n})
        return [float(t) for t in self._receive()["times"]]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"op": "exit"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._tmp.cleanup()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def eager_worker(
    model: str, inputs: Sequence[np.ndarray], threads: int, *, trust: bool = False, input_shapes: Sequence[str] = (),
    calls: Sequence[Sequence[np.ndarray]] | None = None,
) -> Worker:
    """PyTorch eager in its own process: MODEL loaded as the CLI loads it
    (``optc.load.load_model``, ``trust`` honoured), PyTorch's default settings
    but ``torch.set_num_threads(threads)``, gradients off."""
    spec = {"runner": "eager", "model": model, "trust": trust, "input_shapes": list(input_shapes), "threads": threads}
    return Worker(spec, inputs, calls=calls)


def artifact_worker(target: str, options: Any, vmfb: bytes, inputs: Sequence[np.ndarray], threads: int,
                    calls: Sequence[Sequence[np.ndarray]] | None = None) -> Worker:
    """A compiled artifact opened on ``target`` in its own process, IREE's task
    executor limited to ``threads`` workers."""
    spec = {"runner": "artifact", "target": target, "options": _jsonable(asdict(options)), "threads": threads}
    return Worker(spec, inputs, {"vmfb": vmfb}, calls=calls)


def eval_calls(samples: Any, batch: int) -> list[list[np.ndarray]]:
    """The calls of one pass over ``samples`` (``optc.calibration.Samples``) at the
    compiled batch size, the last padded as ``--eval`` pads it."""
    return [chunk for chunk, _ in samples.batches(batch)]


def eager_mismatch(worker: Worker, module: Any, inputs: Sequence[np.ndarray]) -> str:
    """'' when the eager worker's model gives this process's outputs, else what
    differs. It loads the model itself, so a factory that does not seed its
    random weights builds other weights there: same architecture and latency,
    but the report should say so."""
    from optc.verify import compare, eager_outputs

    err = compare(worker.outputs(), eager_outputs(module, inputs)).max_rel
    return "" if err <= 1e-5 else f"outputs differ from the compiled model's (max rel err {err:.2g}: does the factory seed its weights?)"


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


# ---------------------------------------------------------------- worker side


# An opener loads a runner: (prepare: numpy inputs -> what call takes, call, outputs of a call, description).
Opened = tuple[Callable[[list[np.ndarray]], Any], Callable[[Any], Any], Callable[[Any], list[np.ndarray]], str]


def _open_eager(spec: dict[str, Any]) -> Opened:
    import torch

    from optc.load import load_model
    from optc.verify import flatten_outputs

    torch.set_num_threads(spec["threads"])
    torch.set_grad_enabled(False)
    module = load_model(spec["model"], trust=spec["trust"], input_shapes=spec["input_shapes"]).module
    policy = os.environ.get("OMP_WAIT_POLICY")
    omp = f"OMP_WAIT_POLICY={policy} from the environment" if policy else "PyTorch defaults"
    description = f"own process, {omp}, {torch.get_num_threads()} threads"
    return (lambda xs: [torch.from_numpy(x) for x in xs]), (lambda args: module(*args)), (lambda args: flatten_outputs(module(*args))), description


def _open_artifact(spec: dict[str, Any]) -> Opened:
    import iree.runtime as rt

    from optc.registry import load_registry

    rt.flags.parse_flags(f"--task_topology_group_count={spec['threads']}")  # before the first device is created
    target = load_registry().target(spec["target"])
    options = target.Options(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["options"].items()})
    session = target.open(Path(spec["vmfb"]).read_bytes(), options)
    invoke = getattr(session, "invoke", None) or session  # invoke: no copy back to the host
    if getattr(session, "driver", None) == "local-sync":
        runs_on = "local-sync driver: the calling thread (1 thread)"
    else:
        runs_on = f"{spec['threads']} task workers"
    description = f"own process, IREE runtime ({spec['target']} target), {runs_on}"
    return list, (lambda args: invoke(*args)), (lambda args: session(*args)), description


def _worker_main() -> None:
    """The child side of ``Worker``: JSON lines on stdin/stdout; anything else the
    model or runtime prints goes to stderr so it cannot corrupt the replies."""
    import warnings

    warnings.filterwarnings("ignore")
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")

    spec = json.loads(sys.stdin.readline())
    try:
        with np.load(spec["inputs"], allow_pickle=False) as f:
            inputs = [f[f"arr_{i}"] for i in range(len(f.files))]
        opener = {"eager": _open_eager, "artifact": _open_artifact}[spec["runner"]]
        prepare, call, outputs, description = opener(spec)
        np.savez(spec["outputs"], *outputs(prepare(inputs)))
        calls = [prepare(inputs)]
        if "calls" in spec:  # one timed run = every call of an --eval pass
            with np.load(spec["calls"], allow_pickle=False) as f:
                stacked = [f[f"arr_{i}"] for i in range(len(f.files))]
            calls = [prepare([np.ascontiguousarray(x[j]) for x in stacked]) for j in range(len(stacked[0]))]
            description += f", one run = {len(calls)} calls (a pass over the --eval samples)"

        def run() -> None:
            for args in calls:
                call(args)
    except OptcError as e:
        send({"error": str(e), "kind": type(e).__name__})
        return
    send({"pid": os.getpid(), "description": description})
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "exit":
            break
        times = []
        for _ in range(command["n"]):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        send({"times": times})


# ---------------------------------------------------------------- report


def speedups(latency: dict[str, dict[str, float]]) -> dict[str, float]:
    """Ratios of medians: how many times faster the first is than the second."""
    med = {k: v["median"] for k, v in latency.items()}
    out = {"dense_vs_eager": med["eager"] / med["dense"]}
    if "compressed" in med:
        out["compressed_vs_dense"] = med["dense"] / med["compressed"]
        out["compressed_vs_eager"] = med["eager"] / med["compressed"]
    return out


def simulated_comparison(dense: Mapping[str, Any], compressed: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The bench report's ``simulation`` section from two compile reports (or
    their targets' extra sections) that carry a ``simulation`` one: totals of
    each, the speedup in simulated cycles, and cycles per original layer (the
    rows of a layer summed: a factor chain or a partition is several ops; rows
    with no layer under their op name). None where the target simulates nothing."""
    sims = {"dense": dense.get("simulation"), "compressed": compressed.get("simulation") if compressed is not None else None}
    sims = {name: s for name, s in sims.items() if isinstance(s, Mapping)}
    if "dense" not in sims:
        return None
    out: dict[str, Any] = {name: {k: s["totals"][k] for k in ("cycles", "seconds")} for name, s in sims.items()}
    if "compressed" in out and out["compressed"]["cycles"] > 0:
        out["speedup"] = out["dense"]["cycles"] / out["compressed"]["cycles"]
    per_layer: dict[str, dict[str, Any]] = {}
    for name, s in sims.items():
        for layer, cycles in layer_cycles(s).items():
            per_layer.setdefault(layer, {"layer": layer, **{f"{n}_cycles": 0 for n in sims}})[f"{name}_cycles"] = cycles
    out["per_layer"] = list(per_layer.values())
    return out


def layer_cycles(simulation: Mapping[str, Any]) -> dict[str, float]:
    """Simulated cycles per original layer, in program order: the rows of a
    layer summed, rows with no layer under their op name."""
    out: dict[str, float] = {}
    for row in simulation["layers"]:
        layer = row.get("layer") or row.get("op", "?")
        out[layer] = out.get(layer, 0) + row["cycles"]
    return out


LABELS = {"eager": "torch eager", "dense": "IREE dense", "compressed": "IREE compr."}


def format_table(bench: dict[str, Any]) -> str:
    """The table `optc bench` prints."""
    lat = bench["latency_ms"]
    lines = [f"batch {bench['batch']}, {bench['threads']} thread(s), {bench['rounds']} interleaved rounds of {BURST} runs each (first untimed)"]
    ev = bench.get("eval")
    if ev:
        lines.append(f"one run = a pass over the {ev['samples']} --eval samples of {ev['path']} ({ev['calls']} calls); times are per pass")
    lines.append("")
    lines.append(f"{'':12}{'median ms':>11}{'p10 ms':>10}{'p90 ms':>10}{'min ms':>10}{'max ms':>10}")
    for name in ("eager", "dense", "compressed"):
        if name in lat:
            t = lat[name]
            lines.append(f"{LABELS[name]:12}{t['median']:>11.3f}{t['p10']:>10.3f}{t['p90']:>10.3f}{t['min']:>10.3f}{t['max']:>10.3f}")
    if ev:
        lines.append(f"{'per sample':12}" + "".join(f"  {LABELS[k]} {v:.4f} ms" for k, v in ev["per_sample_ms"].items()))
    lines.append("")
    for name, how in bench["timing"].items():
        lines.append(f"{LABELS[name] + ':':13}{how}")
    load = load_line(bench.get("other_cpu_share"))
    if load is not None:
        lines.append(f"{'machine:':13}{load}")
    sp = bench["speedup"]
    lines.append("")
    lines.append(f"dense IREE vs eager       {sp['dense_vs_eager']:.2f}x")
    if "compressed_vs_dense" in sp:
        lines.append(f"compressed vs dense       {sp['compressed_vs_dense']:.2f}x")
        lines.append(f"compressed vs eager       {sp['compressed_vs_eager']:.2f}x")
        if bench["flop_reduction"] is not None:  # None: a program that picks a variant per input at run time
            lines.append(f"FLOP reduction            {bench['flop_reduction']:.2f}x")
            lines.append(f"realized efficiency       {bench['realized_efficiency']:.2f}  (speedup ÷ FLOP reduction)")
    p, a = bench["params"], bench["artifact_bytes"]
    if "compressed" in p:
        lines.append(f"parameters                {p['dense']:,} -> {p['compressed']:,}")
        lines.append(f"artifact bytes            {a['dense']:,} -> {a['compressed']:,}")
    else:
        lines.append(f"parameters                {p['dense']:,}")
        lines.append(f"artifact bytes            {a['dense']:,}")
    sim = bench.get("simulation")
    if sim:
        lines += ["", _simulation_table(sim)]
    return "\n".join(lines)


def _simulation_table(sim: Mapping[str, Any]) -> str:
    """Simulated cycles per layer and in total, dense and (if any) compressed."""
    names = [n for n in ("dense", "compressed") if n in sim]
    lines = [f"simulated accelerator     {' vs '.join(names)}"]
    lines.append(f"{'layer':32}" + "".join(f"{n + ' cycles':>20}" for n in names))
    for row in sim["per_layer"]:
        layer = row["layer"] if len(row["layer"]) <= 31 else "…" + row["layer"][-30:]
        lines.append(f"{layer:32}" + "".join(f"{row[n + '_cycles']:>20,}" for n in names))
    lines.append(f"{'total':32}" + "".join(f"{sim[n]['cycles']:>20,}" for n in names))
    lines.append(f"{'time (ms)':32}" + "".join(f"{sim[n]['seconds'] * 1e3:>20.4f}" for n in names))
    if "speedup" in sim:
        lines.append(f"simulated speedup         {sim['speedup']:.2f}x  (dense cycles ÷ compressed cycles)")
    return "\n".join(lines)


if __name__ == "__main__":
    _worker_main()
