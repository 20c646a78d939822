"""Whole CLI runs: compile -> report -> run, inspect, plugins, targets, and a
third-party plugin installed with pip."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, optc_cli, vulkan_or_skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mlp.vmfb"
    proc = optc_cli("compile", "--plugins", "lowrank", "--opt", "lowrank.rank=32", "--target", "cpu", "examples.models:mlp", "-o", str(out), check=True)
    return out, proc


def test_compile_writes_artifact_and_report(compiled):
    out, proc = compiled
    assert out.exists() and out.stat().st_size > 1000
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["schema"] == "optc.report/1" and report["kind"] == "compile"
    assert report["target"]["name"] == "cpu"
    assert report["methods"][0]["name"] == "lowrank" and report["methods"][0]["options"]["rank"] == 32
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["0.weight"]["macs_before"] == 4 * 256 * 512
    assert rows["0.weight"]["macs_after"] == 4 * (256 * 32 + 32 * 512)
    assert rows["0.weight"]["methods"] == ["lowrank"] and rows["4.weight"]["methods"] == []
    t = report["totals"]
    assert t["macs_after"] < t["macs_before"] and t["params_after"] < t["params_before"]
    assert t["flop_reduction"] == pytest.approx(t["macs_before"] / t["macs_after"])
    v = report["verification"]
    assert v["passed"] and v["compile_error"]["max_rel"] <= 1e-5 and v["verified_with"] == "the artifact itself"
    assert "verified" in proc.stdout and "lowrank: 2 layer(s) changed, 1 skipped" in proc.stdout


def test_run_reproduces_the_compressed_reference(compiled, tmp_path):
    out, _ = compiled
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    optc_cli("run", str(out), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), check=True)
    y = np.load(tmp_path / "y.npy")
    # rebuild the compressed reference in PyTorch from the report's own method
    from optc.api import MethodContext
    from optc.plugins.lowrank import LowRank, LowRankOptions
    from optc.verify import eager_outputs, with_weights
    from tests.conftest import lowered

    model, p = lowered("mlp")
    result = LowRank().apply(p, LowRankOptions(rank=32), MethodContext())
    expected = eager_outputs(with_weights(model.module, result.reference_weights), [x])[0]
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-4)


def test_inspect_prints_the_layer_table():
    proc = optc_cli("inspect", "examples.models:cnn", check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["layer", "op", "weight", "ops", "params", "MACs"]
    stem = next(line for line in lines if line.startswith("stem.weight"))
    assert stem.split()[1:] == ["conv2d", "16x3x3x3", "1", "432", f"{16 * 32 * 32 * 27:,}"]
    assert any(line.startswith("dw.weight") and "depthwise_conv2d" in line for line in lines)


def test_plugins_and_targets_list_what_is_installed():
    plugins = optc_cli("plugins", check=True).stdout
    assert "lowrank" in plugins and "--opt lowrank.rank=None" in plugins
    targets = optc_cli("targets", check=True).stdout
    assert "cpu  (cpu) available" in targets and "vulkan  (vulkan)" in targets
    assert "--target-opt vulkan.profile=default" in targets


def test_every_command_has_help_with_an_example():
    for cmd in ("compile", "run", "inspect", "plugins", "targets"):
        text = optc_cli(cmd, "--help", check=True).stdout
        assert "Example:" in text and f"optc {cmd}" in text


@pytest.mark.parametrize("name", ["cnn", "lstm", "transformer"])
def test_compile_examples_for_vulkan(name, tmp_path):
    vulkan_or_skip()
    out = tmp_path / f"{name}.vmfb"
    optc_cli("compile", "--plugins", "lowrank", "--opt", "lowrank.energy=0.8", "--target", "vulkan", f"examples.models:{name}", "-o", str(out), check=True)
    v = json.loads(out.with_suffix(".json").read_text())["verification"]
    assert v["passed"] and v["compile_error"]["max_rel"] <= 1e-5


def test_bcr_defaults_compile_the_cnn_quietly_and_say_what_was_skipped(tmp_path):
    out = tmp_path / "cnn.vmfb"
    proc = optc_cli("compile", "--quiet", "--plugins", "bcr", "examples.models:cnn", "-o", str(out), check=True)
    assert proc.stderr.strip() == ""  # --quiet: no log lines
    # block 16: fc2 (10 rows) does not fit and is skipped; dw/pw are grouped convolutions
    assert "bcr: 2 layer(s) changed, 3 skipped (2 unsupported, 1 does not fit)" in proc.stdout
    assert "weights 10.3 kB (dense) -> " in proc.stdout
    changes = {c["layer"]: c for c in json.loads(out.with_suffix(".json").read_text())["methods"][0]["changes"]}
    assert changes["fc2.weight"]["status"] == "skipped" and changes["fc2.weight"]["reason"] == "does_not_fit"
    assert changes["stem.weight"]["status"] == "changed" and changes["stem.weight"]["reason"] is None


def test_compile_without_methods_says_so_and_claims_no_reduction(tmp_path):
    proc = optc_cli("compile", "examples.models:mlp", "-o", str(tmp_path / "mlp.vmfb"), check=True)
    assert "method     none: the dense model (" in proc.stdout
    assert "fewer" not in proc.stdout and "optc: compiling for cpu" in proc.stderr


def test_mobile_profile_artifact_is_verified_through_a_portable_build(tmp_path):
    vulkan_or_skip()
    out = tmp_path / "mlp-mali.vmfb"
    proc = optc_cli("compile", "--target", "vulkan", "--target-opt", "vulkan.profile=valhall4", "examples.models:mlp", "-o", str(out), check=True)
    v = json.loads(out.with_suffix(".json").read_text())["verification"]
    assert v["passed"] and "portable build" in v["verified_with"]
    # plain words, no Python dicts: which build was run, and that the mobile one was not
    assert "checking the numbers with a vulkan.profile=default build of the same program instead" in proc.stderr
    assert "verified   a portable build (vulkan.profile=default) of the same program vs compressed reference" in proc.stdout
    assert "the vulkan.profile=valhall4 artifact itself was not run here" in proc.stdout and "{'profile'" not in proc.stdout + proc.stderr
    proc = optc_cli("run", str(out), "--input", str(tmp_path / "none.npy"))
    assert proc.returncode != 0 and "runs only on that GPU family" in proc.stderr


def test_third_party_plugin_installs_registers_and_runs(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # installed from a copy: a build in the source tree leaves build/ and an .egg-info there, which
    # made the next run's registry (tests put the plugin's folder on sys.path) list fp16
    pkg = shutil.copytree(REPO / "examples" / "optc_fp16_plugin", tmp_path / "optc_fp16_plugin", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(pkg)], check=True, capture_output=True)
    try:
        listing = optc_cli("plugins", check=True).stdout
        assert "fp16  (fp16)" in listing
        out = tmp_path / "mlp16.vmfb"
        optc_cli("compile", "--plugins", "fp16", "examples.models:mlp", "-o", str(out), check=True)
        report = json.loads(out.with_suffix(".json").read_text())
        assert report["methods"][0]["name"] == "fp16"
        assert report["totals"]["param_bytes_after"] < 0.6 * report["totals"]["param_bytes_before"]
        assert report["verification"]["passed"]
    finally:
        subprocess.run([*pip, "uninstall", "-y", "optc-fp16"], check=True, capture_output=True)
    assert "fp16" not in optc_cli("plugins", check=True).stdout


def test_report_renders_html_from_a_compile_report(compiled, tmp_path):
    out, _ = compiled
    html = tmp_path / "r.html"
    optc_cli("report", str(out.with_suffix(".json")), "-o", str(html), check=True)
    page = html.read_text()
    assert "<table" in page and 'id="plot-macs"' in page and "0.weight" in page


@pytest.mark.parametrize("content", ['{"schema": "something/else"}', "not json", '[1, 2]'])
def test_report_refuses_a_file_that_is_not_an_optc_report(content, tmp_path):
    src = tmp_path / "x.json"
    src.write_text(content)
    proc = optc_cli("report", str(src), "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2 and "is not an optc report" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.html").exists()


def test_bcr_admm_on_the_digits_cnn_end_to_end(digits, tmp_path):
    """The headline command: prune 4x with bcr, solve with admm on --calib, and
    report top-1 on --eval for the original, the compressed reference and the artifact."""
    out = tmp_path / "cnn.vmfb"
    proc = optc_cli(
        "compile", "--plugins", "bcr,admm", str(digits["cnn"]), "-o", str(out),
        "--opt", "bcr.skip=features.0.weight,classifier.3.weight", "--opt", "bcr.block=8",
        "--opt", "bcr.col_keep=0.25", "--opt", "bcr.row_keep=1",
        "--calib", str(digits["calib"]), "--eval", str(digits["test"]), check=True,
    )
    assert "top-1      original" in proc.stdout and "warning" not in proc.stdout
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["verification"]["passed"] and report["verification"]["compile_error"]["max_rel"] <= 1e-4
    assert report["calibration"]["samples"] == 1024
    acc = report["accuracy"]
    assert acc["samples"] == len(np.load(digits["test"])["y"])
    assert acc["artifact"] == pytest.approx(acc["compressed_reference"], abs=1 / acc["samples"])
    assert acc["artifact"] >= acc["original"] - 0.01  # the goal: at most 1 point lost
    pruned = [r for r in report["layers"] if "bcr" in r["methods"]]
    assert {r["layer"] for r in pruned} == {"features.2.weight", "features.5.weight", "classifier.1.weight"}
    assert sum(r["params_before"] for r in pruned) >= 4 * sum(r["params_after"] for r in pruned)
    assert all(r["methods"] == ["bcr", "admm"] for r in pruned)


def test_compile_warns_when_compression_costs_more_than_a_point_of_top1(digits, tmp_path):
    """Aggressive bcr without calibration or admm: the artifact is right (it matches
    its compressed reference) but scores far below the original; say so."""
    out = tmp_path / "cnn.vmfb"
    proc = optc_cli("compile", "--plugins", "bcr", str(digits["cnn"]), "-o", str(out), "--opt", "bcr.block=8",
                    "--opt", "bcr.col_keep=0.125", "--eval", str(digits["test"]), check=True)
    acc = json.loads(out.with_suffix(".json").read_text())["accuracy"]
    lost = 100 * (acc["original"] - acc["artifact"])
    assert lost > 1
    assert f"warning    the artifact's top-1 is {lost:.2f} points below the original's: milder options, or --calib" in proc.stdout
