"""--target sim: GEMM forms from the IR, SCALE-Sim cycles against the systolic
formula, N:M sparsity, the multi-accelerator model, the report, bad options."""

import json
import math

import pytest

from optc.api import MethodContext, build_options
from optc.errors import OptionError
from optc.program import CONTRACTIONS, op_macs
from optc.targets.sim import Gemm, SimOptions, Simulator, interconnect_cycles, program_gemms, simulate, systolic_cycles
from optc.targets.sim import Array
from tests.conftest import lowered, optc_cli


def sim_options(**values) -> SimOptions:
    return build_options("sim", SimOptions, {k: str(v) for k, v in values.items()})


def test_gemms_handed_to_the_simulator_are_the_programs_ops():
    from optc.testing import lowered as kit_lowered

    _, p = kit_lowered("cnn")  # stem conv, depthwise, grouped 1×1, two linear layers; one 3×16×16 image
    found = program_gemms(p)
    ops = [op for op in p.ops() if op.name in CONTRACTIONS]
    assert [g.op for g in found] == [op.name for op in ops]
    assert [(g.layer, g.batch, g.gemm.m, g.gemm.n, g.gemm.k) for g in found] == [
        ("stem.weight", 1, 16 * 16, 16, 3 * 3 * 3),  # im2col: output pixels × filters × C·KH·KW
        ("dw.weight", 16, 16 * 16, 1, 3 * 3),  # one GEMM per channel
        ("pw.weight", 2, 16 * 16, 8, 8),  # one GEMM per group of 8 channels
        ("fc1.weight", 1, 1, 32, 16),
        ("fc2.weight", 1, 1, 10, 32),
    ]
    for g, op in zip(found, ops):
        assert g.batch * g.gemm.macs == op_macs(op)


def test_dense_matmul_cycles_match_the_systolic_formula():
    g = Gemm(64, 128, 256)  # M×K · K×N on 32×32
    # os: ⌈M/32⌉·⌈N/32⌉ = 2·4 folds of K + R + C − 2 = 318 cycles; ws: ⌈K/32⌉·⌈N/32⌉ = 8·4 folds
    # of M + 2R + C − 2 = 158; is: ⌈K/32⌉·⌈M/32⌉ = 8·2 folds of N + 2R + C − 2 = 222 (−1: counted from 0)
    hand = {"os": 8 * 318 - 1, "ws": 32 * 158 - 1, "is": 16 * 222 - 1}
    for df, cycles in hand.items():
        array = Array(32, 32, 64, 64, 64, df, 500.0, True)
        simulated = Simulator(array, sample_cycles=0).run([g])[g]
        assert simulated["cycles"] == cycles == systolic_cycles(g, 32, 32, df), df
        assert "sampled" not in simulated


def test_nm_sparsity_cuts_weight_stationary_cycles():
    array = Array(32, 32, 64, 64, 64, "ws", 500.0, True)
    dense, sparse = Gemm(8, 64, 256), Gemm(8, 64, 256, (2, 4))
    r = Simulator(array, 0).run([dense, sparse])
    assert r[sparse]["cycles"] == systolic_cycles(sparse, 32, 32, "ws")  # K 256 -> 128: half the row folds
    assert r[dense]["cycles"] / r[sparse]["cycles"] >= 1.8


def test_a_sampled_gemm_keeps_exact_cycles():
    array = Array(32, 32, 64, 64, 64, "os", 500.0, False)
    g = Gemm(200, 100, 64)  # 7·4 folds of 126 cycles: 3527 > the 500-cycle budget
    r = Simulator(array, sample_cycles=500).run([g])[g]
    assert r["sampled"]["scale"] > 1
    assert r["cycles"] == systolic_cycles(g, 32, 32, "os") == 28 * 126 - 1


def test_a_gemm_whose_one_fold_is_too_long_is_sampled_along_its_stream():
    array = Array(32, 32, 64, 64, 64, "ws", 500.0, False)
    g = Gemm(5000, 32, 32)  # ws: one fold streaming all 5000 rows of the input, 5094 cycles
    r = Simulator(array, sample_cycles=500).run([g])[g]
    assert r["sampled"]["simulated_gemm"] == [406, 32, 32]  # 406 + 94 = the 500-cycle budget
    assert r["cycles"] == systolic_cycles(g, 32, 32, "ws") == 5000 + 94 - 1


def test_interconnect_matches_a_hand_calculation():
    # 3 senders × 256 words of 1 byte at 16 GB/s = 48 ns, + 1 µs latency = 1.048 µs = 524 cycles at 500 MHz
    assert interconnect_cycles(256, 3, 16.0, 1.0, 500.0) == 524
    assert interconnect_cycles(256, 0, 16.0, 1.0, 500.0) == 0


def test_dense_layers_split_over_accelerators_pay_for_their_partial_sums():
    _, p = lowered("mlp")  # 4×256 · 256→512→256→10
    one = simulate(p, sim_options(accelerators=1, sample_cycles=0))
    four = simulate(p, sim_options(accelerators=4, sample_cycles=0))
    first = four["layers"][0]
    assert first["gemm"] == {"M": 4, "N": 512, "K": 256} and first["accelerators_used"] == 4
    # each of 4 arrays reduces over 64 inputs; 3 send 4×512 partial sums: 6144 bytes / 16 GB/s + 1 µs = 1.384 µs
    assert first["compute_cycles"] == systolic_cycles(Gemm(4, 512, 64), 32, 32, "ws")
    assert first["interconnect_bytes"] == 3 * 4 * 512
    assert first["interconnect_cycles"] == math.ceil((1e-6 + 6144 / 16e9) * 500e6) == 692
    assert first["cycles"] == first["compute_cycles"] + first["interconnect_cycles"]
    assert one["layers"][0]["interconnect_cycles"] == 0
    assert one["layers"][0]["cycles"] == systolic_cycles(Gemm(4, 512, 256), 32, 32, "ws")


def test_report_totals_are_the_sums_of_its_layers():
    _, p = lowered("mlp")
    report = simulate(p, sim_options(preset="eyeriss", accelerators=2))
    t = report["totals"]
    assert len(report["layers"]) == 3
    for key in ("cycles", "compute_cycles", "interconnect_cycles", "macs", "sram_filter_reads", "dram_ifmap_reads", "dram_ofmap_writes"):
        assert t[key] == sum(row[key] for row in report["layers"]), key
    assert t["seconds"] == pytest.approx(t["cycles"] / 200e6)
    assert report["array"]["rows"] == 12 and report["array"]["cols"] == 14


def test_a_batch_of_independent_gemms_runs_in_waves_without_exchange():
    from optc.plugins.partition import Partition

    _, p = lowered("mlp")
    Partition().apply(p, build_options("partition", Partition.Options, {"parts": "4", "layers": "0.weight"}), MethodContext())
    row = simulate(p, sim_options(accelerators=2, sample_cycles=0))["layers"][0]
    assert row["op"] == "linalg.batch_matmul" and row["batch"] == 4 and row["gemm"] == {"M": 4, "N": 128, "K": 64}
    assert row["interconnect_cycles"] == 0 and row["accelerators_used"] == 2
    assert row["cycles"] == 2 * systolic_cycles(Gemm(4, 128, 64), 32, 32, "ws")  # 4 GEMMs on 2 arrays: 2 waves


@pytest.mark.parametrize(
    "assignments, fragment",
    [
        ({"rows": "0"}, "rows=0"),
        ({"ofmap_kb": "-1"}, "ofmap_kb=-1"),
        ({"preset": "tpu-v9"}, "allowed values are edge32, eyeriss, tpu-v1"),
        ({"dataflow": "rs"}, "allowed values are os, ws, is"),
        ({"accelerators": "0"}, "accelerators=0"),
        ({"interconnect_gbps": "0"}, "interconnect_gbps"),
    ],
)
def test_bad_options_name_the_problem(assignments, fragment):
    with pytest.raises(OptionError, match=fragment.replace("(", r"\(")):
        build_options("sim", SimOptions, assignments)


def test_compile_for_sim_reports_the_simulation(tmp_path):
    out = tmp_path / "mlp.vmfb"
    proc = optc_cli("compile", "--target", "sim", "--target-opt", "sim.accelerators=2", "examples.models:mlp", "-o", str(out), check=True)
    report = json.loads(out.with_suffix(".json").read_text())
    sim = report["simulation"]
    assert report["target"]["name"] == "sim" and out.stat().st_size > 0
    assert sim["totals"]["cycles"] == sum(r["cycles"] for r in sim["layers"])
    assert f"simulated  {sim['totals']['cycles']:,} cycles" in proc.stdout


def test_a_dynamic_batch_artifact_is_simulated_at_its_example_batch(tmp_path):
    # its main only dispatches; the contractions live in the batch variants it calls
    reports = []
    for extra in ([], ["--dynamic-batch"]):
        out = tmp_path / f"mlp{len(extra)}.vmfb"
        optc_cli("compile", "--target", "sim", *extra, "examples.models:mlp", "-o", str(out), check=True)
        reports.append(json.loads(out.with_suffix(".json").read_text())["simulation"])
    fixed, dynamic = reports
    assert dynamic["totals"]["cycles"] == fixed["totals"]["cycles"] > 0
    assert len(dynamic["layers"]) == len(fixed["layers"]) == 3


def test_bad_sim_option_on_the_cli_is_one_line_and_no_file(tmp_path):
    out = tmp_path / "mlp.vmfb"
    proc = optc_cli("compile", "--target", "sim", "--target-opt", "sim.cols=0", "examples.models:mlp", "-o", str(out))
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == ["optc: error: sim: cols=0: must be > 0"]


def test_factor_chains_and_compact_blocks_are_simulated_with_their_own_shapes():
    from optc.plugins.bcr import Bcr
    from optc.plugins.lowrank import LowRank

    _, p = lowered("mlp")  # 4×256 · 256→512→256→10
    LowRank().apply(p, build_options("lowrank", LowRank.Options, {"rank": "32", "layers": "0.weight"}), MethodContext())
    Bcr().apply(p, build_options("bcr", Bcr.Options, {"block": "128", "col_keep": "0.25", "row_keep": "0.5", "col_group": "128", "layers": "2.weight"}), MethodContext())
    shapes = [(g.op, g.layer, g.batch, g.gemm.m, g.gemm.n, g.gemm.k) for g in program_gemms(p)]
    assert shapes == [
        ("linalg.matmul", "0.weight", 1, 4, 32, 256),  # x·A
        ("linalg.matmul", "0.weight", 1, 4, 512, 32),  # (x·A)·B
        ("linalg.batch_matmul", "2.weight", 2, 4, 64, 128),  # 2 blocks × 128 kept cols × 64 kept rows
        ("linalg.matmul", "4.weight", 1, 4, 10, 256),
    ]


def test_admm_nm_masks_reach_the_simulator_as_their_ratio():
    from optc.plugins.admm import Admm
    from optc.testing import run_method

    run = run_method(Admm(), {"prune": "nm", "n": 2, "m": 4, "iterations": 3, "sequential": "false"}, "mlp")  # 64 -> 128 -> 32 -> 10
    assert [g.gemm.nm for g in program_gemms(run.program)] == [(2, 4)] * 3
    rows = simulate(run.program, sim_options(sample_cycles=0))["layers"]
    dense = simulate(run.original, sim_options(sample_cycles=0))["layers"]
    assert [r["nm"] for r in rows] == ["2:4"] * 3
    # ws on 32 rows: K 64 and 128 need half the row folds at 2:4; K=32 fits one fold either way
    assert [d["cycles"] / s["cycles"] > 1.8 for s, d in zip(rows, dense)] == [True, True, False]
    assert simulate(run.program, sim_options(sparsity="false", sample_cycles=0))["layers"][0]["cycles"] == dense[0]["cycles"]


def test_a_drnet_module_is_simulated_as_its_dispatcher_and_its_costliest_variant():
    """Before, only the dispatcher (predictor, resizes) was simulated: a drnet
    module looked many times cheaper than its backbone."""
    from optc.load import load_model
    from optc.lower import lower
    from optc.plugins.drnet import build_module
    from optc.variants import lower_at_shapes
    from tests.plugins.test_drnet import RESOLUTIONS, _forced

    model = load_model("tests.plugins.test_drnet:tiny")
    program = lower(model)
    build_module(program, lower_at_shapes(model, [(2, r, r) for r in RESOLUTIONS]), RESOLUTIONS, _forced(0, 8 * 8), predictor_size=8)
    options = SimOptions()
    report = simulate(program, options)
    alone = {v.func_name: simulate(v, options) for v in program.variants()}
    assert len(alone) == len(RESOLUTIONS)
    assert {name: t["cycles"] for name, t in report["variants"].items()} == {name: a["totals"]["cycles"] for name, a in alone.items()}
    worst = max(alone, key=lambda name: alone[name]["totals"]["cycles"])
    assert report["variant_simulated"] == worst
    dispatched = sum(1 for op in program.ops() if op.name in CONTRACTIONS)  # the predictor and its resize
    assert dispatched > 0 and report["layers"][dispatched:] == alone[worst]["layers"]
    assert report["totals"]["cycles"] == sum(r["cycles"] for r in report["layers"]) > alone[worst]["totals"]["cycles"]
    assert {r["layer"] for r in report["layers"]} >= {"c1.weight", "c2.weight", "fc.weight"}
