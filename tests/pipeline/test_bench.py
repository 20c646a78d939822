"""bench: interleaved timing, ratios from its own medians, batch handling."""

import json

import numpy as np
import pytest

from optc.bench import BURST, Timing, format_table, rebatch, speedups, time_interleaved
from optc.errors import InputError
from tests.conftest import optc_cli, vulkan_or_skip


def test_runners_are_timed_round_robin_after_warmup():
    calls = []
    runners = {k: (lambda k=k: calls.append(k)) for k in ("eager", "dense", "compressed")}
    t = time_interleaved(runners, warmup=2, min_rounds=6, min_seconds=0.0, burst=2)
    assert calls[:6] == ["eager", "dense", "compressed"] * 2  # warm-up
    # interleaved in bursts of 2 (the first after a switch is untimed), each round
    # rotated so no runner always follows the same one
    rotation = ["eager", "dense", "compressed", "dense", "compressed", "eager", "compressed", "eager", "dense"]
    assert calls[6:] == [n for n in rotation for _ in range(2)] * 2
    assert all(len(x.samples) == 6 for x in t.values())


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
        assert t["min"] <= t["median"] <= t["max"] and t["samples"] == b["rounds"] * (BURST - 1)
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
