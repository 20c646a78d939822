"""Issue 8, found by probing optc as a hostile and careless user: wrong answers
with exit 0, rejected correct artifacts, default flags that could not compile
common models, outputs that destroyed inputs, leftovers after signals and
failures. Models are the tiny ones in tests/e2e/probe_models.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.e2e.test_bad_input import REPO, assert_clean_failure, assert_no_output, optc_command, run_optc
from tests.e2e.test_bad_input import mlp_artifact  # noqa: F401  (fixture)


def compiled_probe(tmp_path_factory, name: str, *args: str) -> Path:
    out = tmp_path_factory.mktemp(name) / f"{name}.vmfb"
    proc = run_optc("compile", f"tests.e2e.probe_models:{name}", *args, "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


# --------------------------------------------------------------------------- 1. out-of-range indices


@pytest.fixture(scope="module")
def embedding_artifact(tmp_path_factory) -> Path:
    return compiled_probe(tmp_path_factory, "embedding")


def test_report_records_the_valid_range_of_an_index_input(embedding_artifact):
    report = json.loads(embedding_artifact.with_suffix(".json").read_text())
    assert report["inputs"] == [{"shape": [1, 4], "dtype": "int64", "index_range": [0, 50]}]


@pytest.mark.parametrize("bad", [50, 60, 10**6, -1])
def test_run_refuses_an_index_outside_the_embedding_table(tmp_path, embedding_artifact, bad):
    x = tmp_path / "tokens.npy"
    np.save(x, np.array([[1, 2, bad, 0]], np.int64))
    out = tmp_path / "out"
    proc = run_optc("run", embedding_artifact, "--input", x, "--output", out / "y.npy")
    assert_clean_failure(proc, "table of 50 rows", "[0, 50)", f"found {bad}", out_dir=out)


def test_run_checks_indices_from_the_artifact_alone(tmp_path, embedding_artifact):
    """The valid range travels inside the .vmfb: without its .json, run still refuses."""
    alone = tmp_path / "alone.vmfb"
    alone.write_bytes(embedding_artifact.read_bytes())
    np.save(tmp_path / "tokens.npy", np.array([[1, 2, 50, 0]], np.int64))
    out = tmp_path / "out"
    proc = run_optc("run", alone, "--input", tmp_path / "tokens.npy", "--output", out / "y.npy")
    assert_clean_failure(proc, "table of 50 rows", "[0, 50)", "found 50", out_dir=out)


def test_run_accepts_the_last_row_of_the_table(tmp_path, embedding_artifact):
    from tests.e2e.probe_models import embedding

    tokens = np.array([[49, 0, 7, 3]], np.int64)
    np.save(tmp_path / "tokens.npy", tokens)
    proc = run_optc("run", embedding_artifact, "--input", tmp_path / "tokens.npy", "--output", tmp_path / "y.npy")
    assert proc.returncode == 0, proc.stderr
    model, _ = embedding()
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


def test_eval_data_with_an_index_out_of_range_is_refused(tmp_path):
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.array([[1, 2, 3, 4], [1, 2, 3, 55]], np.int64), y=np.array([0, 1]))
    out = tmp_path / "out"
    proc = run_optc("compile", "tests.e2e.probe_models:embedding", "--eval", data, "-o", out / "m.vmfb")
    assert_clean_failure(proc, "--eval", "eval.npz", "found 55", out_dir=out)


# --------------------------------------------------------------------------- 2. .npz inputs by name


@pytest.fixture(scope="module")
def two_input_artifact(tmp_path_factory) -> Path:
    return compiled_probe(tmp_path_factory, "two_inputs")


def _expected_two_inputs(x: np.ndarray, bias: np.ndarray) -> np.ndarray:
    from tests.e2e.probe_models import two_inputs

    model, _ = two_inputs()
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(bias)).numpy()


@pytest.mark.parametrize("names", [("arg0", "arg1"), ("x0", "x1")])
def test_npz_inputs_are_matched_by_name_not_by_order_in_the_file(tmp_path, two_input_artifact, names):
    rng = np.random.default_rng(0)
    x, bias = rng.standard_normal((2, 2, 4)).astype(np.float32)
    data = tmp_path / "in.npz"
    np.savez(data, **{names[1]: bias, names[0]: x})  # the second input stored first
    proc = run_optc("run", two_input_artifact, "--input", data, "--output", tmp_path / "y.npy")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _expected_two_inputs(x, bias), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("names", [("input", "bias"), ("arg1", "foo"), ("arg0",), ("arg0", "arg1", "arg2"), ("x0", "arg1")])
def test_npz_inputs_with_unknown_or_missing_names_are_refused(tmp_path, two_input_artifact, names):
    data = tmp_path / "in.npz"
    np.savez(data, **{n: np.zeros((2, 4), np.float32) for n in names})
    out = tmp_path / "out"
    proc = run_optc("run", two_input_artifact, "--input", data, "--output", out / "y.npy")
    assert_clean_failure(proc, "in.npz", "x0, x1, … or arg0, arg1", repr(names[0]), out_dir=out)


# --------------------------------------------------------------------------- 3. dict outputs


def test_dict_outputs_in_insertion_order_verify(tmp_path):
    out = tmp_path / "d.vmfb"
    proc = run_optc("compile", "tests.e2e.probe_models:dict_outputs", "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["verification"]["compile_error"]["max_rel"] < 1e-5
    assert report["target"]["flags_used"] == "fast"


# --------------------------------------------------------------------------- 5. outputs that are inputs


def test_report_refuses_to_overwrite_its_own_json(tmp_path, mlp_artifact):  # noqa: F811
    report = tmp_path / "r.json"
    report.write_bytes(mlp_artifact.with_suffix(".json").read_bytes())
    before = report.read_bytes()
    proc = run_optc("report", report, "-o", report)
    assert_clean_failure(proc, "-o", "r.json", "this command reads")
    assert report.read_bytes() == before


@pytest.mark.parametrize("which", ["input", "artifact", "report"])
def test_run_refuses_an_output_that_is_one_of_its_inputs(tmp_path, mlp_artifact, which):  # noqa: F811
    art = tmp_path / "a.vmfb"
    art.write_bytes(mlp_artifact.read_bytes())
    art.with_suffix(".json").write_bytes(mlp_artifact.with_suffix(".json").read_bytes())
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((4, 256), np.float32))
    target = {"input": x, "artifact": art, "report": art.with_suffix(".json")}[which]
    before = target.read_bytes()
    proc = run_optc("run", art, "--input", x, "--output", target)
    assert_clean_failure(proc, "--output", "this command reads")
    assert target.read_bytes() == before


# --------------------------------------------------------------------------- 6. crashes -> one line


def test_factory_that_raises(tmp_path):
    out = tmp_path / "out"
    proc = run_optc("compile", "tests.e2e.probe_models:raises", "-o", out / "m.vmfb")
    assert_clean_failure(proc, "tests.e2e.probe_models:raises raised RuntimeError", "the factory itself fails", out_dir=out)


def test_model_with_a_tm_tensor_op_compiles(tmp_path):
    """torch.sort lowers to tm_tensor.sort: program.clone() must parse it."""
    out = tmp_path / "s.vmfb"
    proc = run_optc("compile", "tests.e2e.probe_models:sort", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_model_without_weighted_layers_compiles_and_prints_its_summary(tmp_path):
    out = tmp_path / "n.vmfb"
    proc = run_optc("compile", "tests.e2e.probe_models:no_weights", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "no contractions" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_before_the_compile(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = run_optc("compile", "examples.models:mlp", "-o", folder / "m.vmfb")
        assert_clean_failure(proc, "-o", "cannot write in", out_dir=folder)
        assert "lowering" not in proc.stderr  # refused before any work
    finally:
        folder.chmod(0o755)


def test_lowering_failure_prints_one_line_and_keeps_the_dumps_for_verbose(tmp_path):
    out = tmp_path / "out"
    proc = run_optc("compile", "tests.e2e.probe_models:branch", "-o", out / "m.vmfb")
    assert_clean_failure(proc, "torch.export failed", "data-dependent", out_dir=out)
    verbose = run_optc("--verbose", "compile", "tests.e2e.probe_models:branch", "-o", out / "m.vmfb")
    assert verbose.returncode == 2 and "def forward" in verbose.stderr


# --------------------------------------------------------------------------- 7. nothing of the model left readable


def test_failed_lowering_leaves_nothing_in_the_temp_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = run_optc("compile", "tests.e2e.unlowerable_model:model", "-o", tmp_path / "o" / "m.vmfb", env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.returncode == 2, proc.stderr
    assert sorted(p.name for p in tmp.iterdir()) == []  # torch-mlir's UnnammedModule.mlir went with its private folder


# --------------------------------------------------------------------------- 8. signals


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        found += [int(k) for k in kids]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_the_iree_step_kills_iree_compile_and_leaves_nothing(tmp_path, sig, code):
    out = tmp_path / "out"
    proc = subprocess.Popen([*optc_command(), "compile", "examples.models:cnn", "-o", out / "m.vmfb"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = None
    deadline = time.monotonic() + 240
    while child is None and time.monotonic() < deadline and proc.poll() is None:
        child = next((c for c in _children(proc.pid) if "iree-compile" in _cmdline(c)), None)
        time.sleep(0.05)
    assert child is not None, "iree-compile never started"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "iree-compile" not in _cmdline(child), "iree-compile outlived optc"
    assert_no_output(out)


# --------------------------------------------------------------------------- 9. artifact + report as a pair


def test_report_carries_the_artifact_hash_and_run_refuses_a_mismatched_pair(tmp_path, mlp_artifact):  # noqa: F811
    import hashlib

    report = json.loads(mlp_artifact.with_suffix(".json").read_text())
    assert report["artifact"]["sha256"] == hashlib.sha256(mlp_artifact.read_bytes()).hexdigest()
    art = tmp_path / "a.vmfb"
    art.write_bytes(mlp_artifact.read_bytes())
    report["artifact"]["sha256"] = "0" * 64  # the .json of another compile
    art.with_suffix(".json").write_text(json.dumps(report))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((4, 256), np.float32))
    out = tmp_path / "out"
    proc = run_optc("run", art, "--input", x, "--output", out / "y.npy")
    assert_clean_failure(proc, "a.vmfb does not match its report", "sha256", out_dir=out)
