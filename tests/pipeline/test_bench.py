"""bench: interleaved timing, ratios from its own medians, batch handling, and
each runner in its own worker process."""

import json
import os
import re
import statistics

import numpy as np
import pytest
import torch

from optc.bench import (
    BURST, OtherLoad, Timing, artifact_worker, eager_mismatch, eager_worker, eval_calls, format_table, rebatch, simulated_comparison, speedups,
    load_line, time_interleaved, time_workers,
)
from optc.calibration import Samples
from optc.errors import InputError, LoadError
from tests.conftest import REPO, lowered, optc_cli, vulkan_or_skip


class Scripted:
    """A runner that records when it is asked to run and answers scripted durations."""

    def __init__(self, name: str, calls: list, durations: list[float] | None = None):
        self.name, self.calls, self.durations = name, calls, list(durations or [])

    def burst(self, n: int) -> list[float]:
        self.calls.extend([self.name] * n)
        return [self.durations.pop(0) if self.durations else 0.001 for _ in range(n)]


def test_runners_are_timed_round_robin_after_warmup():
    calls: list[str] = []
    runners = {k: Scripted(k, calls) for k in ("eager", "dense", "compressed")}
    t = time_interleaved(runners, warmup=2, min_rounds=6, min_seconds=0.0, burst=2)
    assert calls[:6] == ["eager", "dense", "compressed"] * 2  # warm-up
    # interleaved in bursts of 2 (the first after a switch is untimed), each round
    # rotated so no runner always follows the same one
    rotation = ["eager", "dense", "compressed", "dense", "compressed", "eager", "compressed", "eager", "dense"]
    assert calls[6:] == [n for n in rotation for _ in range(2)] * 2
    assert all(len(x.samples) == 6 for x in t.values())


def test_timings_are_the_runs_after_each_switch_and_their_median():
    # warm-up run, then bursts of 3: the first of each burst (100 s) must be dropped
    durations = [50.0] + [100.0, 0.004, 0.002, 100.0, 0.009, 0.001, 100.0, 0.003, 0.005]
    t = time_interleaved({"eager": Scripted("eager", [], durations)}, warmup=1, min_rounds=3, min_seconds=0.0, burst=3)
    recorded = [0.004, 0.002, 0.009, 0.001, 0.003, 0.005]
    assert t["eager"].samples == recorded
    d = t["eager"].as_dict()
    assert d["median"] == pytest.approx(statistics.median(recorded) * 1e3)
    assert d["min"] == pytest.approx(1.0) and d["max"] == pytest.approx(9.0) and d["samples"] == 6
    assert d["p10"] == pytest.approx(np.percentile([r * 1e3 for r in recorded], 10))
    assert d["min"] <= d["p10"] <= d["median"] <= d["p90"] <= d["max"]


def test_other_load_is_the_machines_busy_time_not_ours(tmp_path):
    def write(cpu: str, ours: dict[int, tuple[int, int]]) -> None:
        (tmp_path / "stat").write_text(f"cpu  {cpu}\ncpu0 1 2 3 4 5 6 7 8\n")
        for pid, (utime, stime) in ours.items():
            (tmp_path / str(pid)).mkdir(exist_ok=True)
            fields = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 30
            (tmp_path / str(pid) / "stat").write_text(f"{pid} (python (worker) x) {' '.join(fields)}\n")

    worker = os.getpid() + 1
    # user nice system idle iowait irq softirq steal (guest fields ignored)
    write("100 0 50 800 0 0 0 50 0 0", {os.getpid(): (10, 5), worker: (0, 0)})
    with OtherLoad([worker], proc=tmp_path) as load:
        write("300 0 100 1400 0 0 0 100 0 0", {os.getpid(): (20, 5), worker: (120, 20)})
    # 900 jiffies passed, 300 of them busy, 150 of those ours
    assert load.share == pytest.approx((300 - 150) / 900)
    with OtherLoad([worker], proc=tmp_path / "missing") as load:
        pass
    assert load.share is None


class _Sleeper:
    pid = os.getpid()  # OtherLoad counts the runner's CPU time as the bench's own

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    def burst(self, n: int) -> list[float]:
        self.calls += n
        return [self.seconds] * n


def test_time_workers_counts_rounds_and_says_how_busy_the_machine_was():
    runners = {"a": _Sleeper(0.001), "b": _Sleeper(0.002)}
    measured = time_workers(runners, min_rounds=4, min_seconds=0)
    assert measured.rounds == 4
    assert [t.as_dict()["median"] for t in measured.timings.values()] == [1.0, 2.0]
    assert runners["a"].calls == 3 + 4 * 3  # warm-up, then 4 rounds of a burst each
    if measured.other_cpu_share is not None:
        assert f"other processes used {100 * measured.other_cpu_share:.0f}% of the CPUs" in measured.load_line()
    assert load_line(None) is None and "noisy" in load_line(0.5) and "noisy" not in load_line(0.05)


def test_speedups_are_ratios_of_medians():
    lat = {
        "eager": Timing([0.010, 0.012, 0.030]).as_dict(),
        "dense": Timing([0.004, 0.005, 0.006]).as_dict(),
        "compressed": Timing([0.002, 0.0025, 0.009]).as_dict(),
    }
    assert lat["eager"]["median"] == pytest.approx(12.0)
    sp = speedups(lat)
    assert sp["dense_vs_eager"] == pytest.approx(12.0 / 5.0)
    assert sp["compressed_vs_dense"] == pytest.approx(5.0 / 2.5)
    assert sp["compressed_vs_eager"] == pytest.approx(12.0 / 2.5)
    assert "compressed_vs_dense" not in speedups({"eager": lat["eager"], "dense": lat["dense"]})


def test_rebatch_replaces_the_leading_dimension():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = rebatch([x], 5)
    assert y.shape == (5, 3) and (y[2] == x[0]).all()
    with pytest.raises(InputError, match="must be a positive integer"):
        rebatch([x], 0)


# ------------------------------------------------------------ worker processes


class WhereAmI(torch.nn.Module):
    """Answers the process id it runs in, its PyTorch thread count, and whether
    OMP_WAIT_POLICY is set there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        policy_set = float("OMP_WAIT_POLICY" in os.environ)
        return x + torch.tensor([float(os.getpid()), float(torch.get_num_threads()), policy_set], dtype=torch.float64)


def where_am_i():
    return WhereAmI(), (torch.zeros(3, dtype=torch.float64),)


def test_eager_runs_in_its_own_process_with_pytorch_defaults(monkeypatch):
    monkeypatch.chdir(REPO)  # factories resolve from the working directory, as in the CLI
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with eager_worker("tests.pipeline.test_bench:where_am_i", [np.zeros(3)], threads=1) as w:
        pid, threads, policy_set = w.outputs()[0]
        assert pid == w.pid == w.proc.pid != os.getpid()
        assert threads == 1 and policy_set == 0
        assert w.description == "own process, PyTorch defaults, 1 threads"
        times = w.burst(3)
        assert len(times) == 3 and all(t > 0 for t in times)
        assert w.proc.poll() is None  # persistent: still there for the next burst
        assert len(w.burst(2)) == 2
    assert w.proc.poll() is not None  # closed with the context


def unseeded():
    return torch.nn.Linear(8, 8), (torch.ones(2, 8),)


@pytest.mark.parametrize("factory,differs", [("examples.models:mlp", False), ("tests.pipeline.test_bench:unseeded", True)])
def test_eager_worker_weights_are_checked_against_the_compiled_models(factory, differs, monkeypatch):
    from optc.load import load_model

    monkeypatch.chdir(REPO)
    loaded = load_model(factory)
    inputs = [t.numpy() for t in loaded.example_inputs]
    with eager_worker(factory, inputs, threads=1) as w:
        note = eager_mismatch(w, loaded.module, inputs)
    assert note.startswith("outputs differ from the compiled model's") if differs else note == ""


def test_eager_worker_honours_trust(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = tmp_path / "pickled.pt"
    torch.save(WhereAmI(), path)
    with pytest.raises(LoadError, match="--trust"):
        with eager_worker(str(path), [np.zeros(3)], threads=1, input_shapes=["3"]) as w:
            w.wait_ready()
    with eager_worker(str(path), [np.zeros(3)], threads=1, trust=True, input_shapes=["3"]) as w:
        assert w.outputs()[0][0] == w.pid != os.getpid()


def test_artifact_runs_in_its_own_process_with_the_parents_numbers():
    from optc.registry import load_registry

    _, program = lowered("mlp")
    cpu = load_registry().target("cpu")
    options = cpu.Options()
    art = cpu.compile(program, options)
    inputs = program.example_inputs
    expected = cpu.open(art.vmfb, options)(*inputs)
    with artifact_worker("cpu", options, art.vmfb, inputs, threads=1) as w:
        assert w.pid != os.getpid()
        np.testing.assert_array_equal(w.outputs()[0], expected[0])
        assert w.description == "own process, IREE runtime (cpu target), 1 task workers"
        assert len(w.burst(2)) == 2


class Recorder(torch.nn.Module):
    """Appends the first value of every batch it is called on to $OPTC_TEST_CALLS."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with open(os.environ["OPTC_TEST_CALLS"], "a") as f:
            f.write(f"{float(x[0, 0]):g}\n")
        return x * 2


def recorder():
    return Recorder(), (torch.zeros(2, 3),)


def test_a_timed_run_is_a_pass_over_the_eval_samples(tmp_path, monkeypatch):
    """With --eval data, every timed run calls the model on each batch of the
    samples in turn (the last padded), not on the example input."""
    monkeypatch.chdir(REPO)
    log = tmp_path / "calls.txt"
    monkeypatch.setenv("OPTC_TEST_CALLS", str(log))
    x = np.repeat(np.arange(1, 6, dtype=np.float32)[:, None], 3, axis=1)  # sample i is all i+1
    calls = eval_calls(Samples(tmp_path / "e.npz", [x], None), batch=2)
    assert [c[0][:, 0].tolist() for c in calls] == [[1, 2], [3, 4], [5, 5]]
    with eager_worker("tests.pipeline.test_bench:recorder", [np.zeros((2, 3), np.float32)], threads=1, calls=calls) as w:
        assert "one run = 3 calls (a pass over the --eval samples)" in w.description
        assert len(w.burst(2)) == 2  # two durations: one per pass
    seen = log.read_text().split()
    assert seen == ["0"] + ["1", "3", "5"] * 2  # the outputs check on the example input, then two passes


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = optc_cli(
        "bench", "--plugins", "lowrank", "--opt", "lowrank.rank=32", "--batch", "8", "--threads", "1",
        "--min-rounds", "10", "--min-seconds", "0.5", "examples.models:mlp", "--json", str(out), check=True,
    )
    return proc, json.loads(out.read_text())


def test_bench_report_ratios_come_from_its_own_medians(bench_report):
    proc, report = bench_report
    b = report["bench"]
    assert report["schema"] == "optc.report/1" and report["kind"] == "bench"
    assert b["batch"] == 8 and b["threads"] == 1 and b["rounds"] >= 10
    lat = b["latency_ms"]
    assert set(lat) == {"eager", "dense", "compressed"}
    for t in lat.values():
        assert t["min"] <= t["p10"] <= t["median"] <= t["p90"] <= t["max"] and t["samples"] == b["rounds"] * (BURST - 1)
    assert b["speedup"]["compressed_vs_dense"] == pytest.approx(lat["dense"]["median"] / lat["compressed"]["median"])
    assert b["speedup"]["dense_vs_eager"] == pytest.approx(lat["eager"]["median"] / lat["dense"]["median"])
    assert b["flop_reduction"] == pytest.approx(report["totals"]["macs_before"] / report["totals"]["macs_after"])
    assert b["realized_efficiency"] == pytest.approx(b["speedup"]["compressed_vs_dense"] / b["flop_reduction"])
    assert b["params"]["compressed"] < b["params"]["dense"]
    assert b["artifact_bytes"]["compressed"] < b["artifact_bytes"]["dense"]
    assert report["verification"]["passed"]
    # the printed table shows the same numbers
    assert f"{lat['eager']['median']:.3f}" in proc.stdout
    assert format_table(b) in proc.stdout


def test_bench_report_says_how_each_runner_was_timed(bench_report):
    proc, report = bench_report
    timing = report["bench"]["timing"]
    assert timing["eager"] == "own process, PyTorch defaults, 1 threads"  # the eager worker's weights are the compiled ones
    # mlp is small: cpu.driver=auto runs both artifacts on the calling thread
    assert timing["dense"] == timing["compressed"] == "own process, IREE runtime (cpu target), local-sync driver: the calling thread (1 thread)"
    assert "torch eager: own process, PyTorch defaults, 1 threads" in proc.stdout
    assert "omp_wait_policy" not in report["bench"]
    share = report["bench"]["other_cpu_share"]
    assert 0.0 <= share <= 1.0 and f"other processes used {100 * share:.0f}% of the CPUs" in proc.stdout


def test_bench_with_eval_times_passes_over_the_samples_and_says_so(tmp_path):
    from optc.load import load_model

    example = load_model("examples.models:mlp").example_inputs[0]
    rng = np.random.default_rng(0)
    data = tmp_path / "eval.npz"
    n = 5
    np.savez(data, x=rng.standard_normal((n,) + tuple(example.shape[1:])).astype(np.float32), y=rng.integers(0, 10, n))
    out = tmp_path / "b.json"
    proc = optc_cli("bench", "--threads", "1", "--min-rounds", "2", "--min-seconds", "0", "--batch", "2",
                    "--eval", str(data), "examples.models:mlp", "--json", str(out), check=True)
    report = json.loads(out.read_text())
    ev = report["bench"]["eval"]
    assert ev["samples"] == n and ev["calls"] == 3  # 2 + 2 + 1 padded
    for name, how in report["bench"]["timing"].items():
        assert how.endswith("one run = 3 calls (a pass over the --eval samples)"), name
        assert ev["per_sample_ms"][name] == pytest.approx(report["bench"]["latency_ms"][name]["median"] / n)
    assert report["accuracy"]["samples"] == n  # the --eval top-1, as compile reports it
    assert f"one run = a pass over the {n} --eval samples" in proc.stdout


def test_bench_with_a_bad_eval_file_fails_before_compiling(tmp_path):
    out = tmp_path / "b.json"
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 2), np.float32), y=np.zeros(3, np.int64))
    proc = optc_cli("bench", "--eval", str(bad), "examples.models:mlp", "--json", str(out))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and not out.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith(f"optc: error: --eval {bad}: x has shape (3, 2)")
    assert "dense compile" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--batch", "0"], "--batch 0: must be a positive integer"),
    (["--threads", "-1"], "--threads -1: must be a positive integer"),
    (["--target-opt", "vulkan.profile=adreno", "--target", "vulkan"], "cannot time target 'vulkan' here"),
])
def test_bench_bad_input_is_one_clean_line(args, message, tmp_path):
    if "vulkan" in args:
        vulkan_or_skip()
    out = tmp_path / "b.json"
    proc = optc_cli("bench", "examples.models:mlp", "--json", str(out), *args)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == f"optc: error: {message}" or message in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def simulated(rows: list[tuple[str | None, str, int]], clock_mhz: float = 500.0) -> dict:
    """A compile report with a target's ``simulation`` section of (layer, op, cycles) rows."""
    layers = [{"layer": layer, "op": op, "cycles": c, "compute_cycles": c, "interconnect_cycles": 0} for layer, op, c in rows]
    total = sum(c for _, _, c in rows)
    return {"kind": "compile", "simulation": {"layers": layers, "totals": {"cycles": total, "seconds": total / (clock_mhz * 1e6)}}}


def test_bench_simulation_sums_each_layers_ops_and_compares_totals():
    dense = simulated([("fc1.weight", "linalg.matmul", 4000), ("fc2.weight", "linalg.matmul", 3000), (None, "linalg.batch_matmul", 500)])
    # lowrank made fc1 a factor chain of two matmuls; fc2 kept
    compressed = simulated([("fc1.weight", "linalg.matmul", 900), ("fc1.weight", "linalg.matmul", 700),
                            ("fc2.weight", "linalg.matmul", 3000), (None, "linalg.batch_matmul", 500)])
    sim = simulated_comparison(dense, compressed)
    assert sim["dense"] == {"cycles": 7500, "seconds": pytest.approx(7500 / 500e6)}
    assert sim["compressed"] == {"cycles": 5100, "seconds": pytest.approx(5100 / 500e6)}
    assert sim["speedup"] == pytest.approx(7500 / 5100)
    assert sim["per_layer"] == [
        {"layer": "fc1.weight", "dense_cycles": 4000, "compressed_cycles": 1600},
        {"layer": "fc2.weight", "dense_cycles": 3000, "compressed_cycles": 3000},
        {"layer": "linalg.batch_matmul", "dense_cycles": 500, "compressed_cycles": 500},
    ]
    table = format_table({
        "batch": 4, "threads": 1, "rounds": 2, "timing": {}, "latency_ms": {}, "speedup": {"dense_vs_eager": 1.0},
        "params": {"dense": 1}, "artifact_bytes": {"dense": 1}, "simulation": sim,
    })
    assert "simulated speedup         1.47x" in table
    assert re.search(r"fc1\.weight +4,000 +1,600\n", table) and re.search(r"total +7,500 +5,100\n", table)
    assert "time (ms)" in table and f"{7500 / 500e6 * 1e3:.4f}" in table


def test_bench_simulation_only_where_the_target_simulates():
    assert simulated_comparison({"kind": "compile"}, {"kind": "compile"}) is None
    dense_only = simulated_comparison(simulated([("fc1.weight", "linalg.matmul", 10)]), None)  # no --plugins
    assert "compressed" not in dense_only and "speedup" not in dense_only
    assert dense_only["per_layer"] == [{"layer": "fc1.weight", "dense_cycles": 10}]


def test_bench_on_sim_compares_simulated_cycles(tmp_path):
    out = tmp_path / "bench.json"
    proc = optc_cli(
        "bench", "examples.models:mlp", "--target", "sim", "--plugins", "lowrank", "--opt", "lowrank.rank=16",
        "--threads", "1", "--min-rounds", "2", "--min-seconds", "0", "--json", str(out), check=True,
    )
    report = json.loads(out.read_text())
    sim = report["bench"]["simulation"]
    assert sim["speedup"] == pytest.approx(sim["dense"]["cycles"] / sim["compressed"]["cycles"]) and sim["speedup"] > 1
    assert sim["compressed"]["cycles"] == report["simulation"]["totals"]["cycles"]  # the compressed compile's own section
    assert sum(r["compressed_cycles"] for r in sim["per_layer"]) == sim["compressed"]["cycles"]
    assert set(report["bench"]["latency_ms"]) == {"eager", "dense", "compressed"}  # CPU timings as before
    assert "simulated speedup" in proc.stdout and format_table(report["bench"]) in proc.stdout
