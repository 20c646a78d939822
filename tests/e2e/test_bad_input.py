"""Every bad input to the real `optc` CLI: a non-zero exit status, exactly one
`optc: error:` line on stderr that names the problem, no traceback, and no
output file (artifact or report) left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def run_optc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, from the repo root (so `examples.*` and
    `tests.*` factory references resolve), with the user's environment."""
    exe = shutil.which("optc", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "optc.cli"]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_clean_failure(proc: subprocess.CompletedProcess, *fragments: str, out_dir: Path | None = None) -> str:
    """The failure contract; returns the error line."""
    assert proc.returncode != 0, f"expected a failure, got exit 0\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("optc: error:")]
    assert len(errors) == 1, f"expected exactly one 'optc: error:' line:\n{proc.stderr}"
    # The error is one line: nothing else on stderr but optc's own progress lines.
    stray = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("optc: ")]
    assert not stray, f"stray stderr lines {stray!r} in:\n{proc.stderr}"
    line = errors[0]
    for f in fragments:
        assert f in line, f"{f!r} not in {line!r}"
    if out_dir is not None:
        assert_no_output(out_dir)
    return line


def assert_no_output(out_dir: Path) -> None:
    left = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert not left, f"output left behind in {out_dir}: {left}"


def compile_into(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`optc compile ARGS -o tmp_path/out/m.vmfb`; returns (process, out folder)."""
    out = tmp_path / "out"
    return run_optc("compile", *args, "-o", out / "m.vmfb"), out


# --------------------------------------------------------------------------- model files


@pytest.fixture(scope="module")
def linear_archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "linear.pt2"
    ep = torch.export.export(torch.nn.Linear(4, 3).eval(), (torch.randn(2, 4),))
    torch.export.save(ep, str(path))
    return path


def test_missing_model_file(tmp_path):
    proc, out = compile_into(tmp_path, tmp_path / "nope.pt2")
    assert_clean_failure(proc, "model file not found", "nope.pt2", out_dir=out)


def test_random_bytes_named_pt2(tmp_path):
    data = os.urandom(4096)
    if data[:1] == b"\x80":  # the pickle protocol marker: optc would (rightly) guess "pickled module"
        data = b"\x00" + data[1:]
    bad = tmp_path / "model.pt2"
    bad.write_bytes(data)
    proc, out = compile_into(tmp_path, bad)
    assert_clean_failure(proc, "model.pt2", "is not a model optc can read", "torch.export archive", out_dir=out)


@pytest.mark.parametrize("cut", ["first-half", "no-central-directory"])
def test_truncated_export_archive(tmp_path, linear_archive, cut):
    data = linear_archive.read_bytes()
    if cut == "first-half":
        end = len(data) // 2
    else:  # every entry intact, only the zip's central directory (its tail) lost
        with zipfile.ZipFile(linear_archive) as zf:
            end = zf.start_dir
    bad = tmp_path / "cut.pt2"
    bad.write_bytes(data[:end])
    proc, out = compile_into(tmp_path, bad)
    # It *is* a torch.export archive, only cut short: say so, rather than "not a
    # model optc can read" or "a pickled module ... --trust".
    line = assert_clean_failure(proc, "cut.pt2", "corrupt or truncated", out_dir=out)
    assert "--trust" not in line


def test_intact_export_archive_compiles(tmp_path, linear_archive):
    """The control for the truncated one: the whole archive compiles with its own inputs."""
    proc, out = compile_into(tmp_path, linear_archive)
    assert proc.returncode == 0, proc.stderr
    assert (out / "m.vmfb").is_file() and (out / "m.json").is_file()


@pytest.fixture(scope="module")
def pickled_module(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pickled") / "pickled.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), path)
    return path


def test_pickled_module_without_trust(tmp_path, pickled_module):
    proc, out = compile_into(tmp_path, pickled_module, "--input-shape", "1x4")
    assert_clean_failure(proc, "pickled.pt", "pickled module", "--trust", out_dir=out)


def test_pickled_module_with_trust_compiles(tmp_path, pickled_module):
    proc, out = compile_into(tmp_path, pickled_module, "--trust", "--input-shape", "1x4")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "m.vmfb").is_file() and (out / "m.vmfb").stat().st_size > 0
    assert (out / "m.json").is_file()


def test_pickled_module_with_trust_but_no_input_shape(tmp_path, pickled_module):
    proc, out = compile_into(tmp_path, pickled_module, "--trust")
    assert_clean_failure(proc, "--input-shape", out_dir=out)


def test_torchscript_file(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(path))
    proc, out = compile_into(tmp_path, path)
    line = assert_clean_failure(proc, "scripted.pt", "TorchScript", "torch.export.save", out_dir=out)
    assert " not " in line


def test_unknown_factory_module(tmp_path):
    proc, out = compile_into(tmp_path, "no_such_pkg.models:net")
    assert_clean_failure(proc, "cannot import 'no_such_pkg.models'", out_dir=out)


def test_unknown_factory_attribute(tmp_path):
    proc, out = compile_into(tmp_path, "examples.models:no_such_model")
    assert_clean_failure(proc, "examples.models", "'no_such_model'", out_dir=out)


def test_op_that_cannot_be_lowered_is_named(tmp_path):
    proc, out = compile_into(tmp_path, "tests.e2e.unlowerable_model:model")
    line = assert_clean_failure(proc, "cannot lower", out_dir=out)
    assert "optc_test.mystery" in line or "optc_test::mystery" in line, line


# --------------------------------------------------------------------------- names and options


@pytest.mark.parametrize(
    "args,fragments",
    [
        pytest.param(["--plugins", "nosuchmethod"], ["unknown method 'nosuchmethod'", "installed methods:", "lowrank"], id="unknown-method"),
        pytest.param(["--plugins", "lowrank", "--opt", "lowrank.nosuch=1"], ["unknown option lowrank.nosuch", "options are:", "rank", "energy"], id="unknown-field"),
        pytest.param(["--plugins", "lowrank", "--opt", "lowrank.rank=abc"], ["lowrank.rank='abc'", "expected int"], id="wrong-type"),
        pytest.param(["--plugins", "lowrank", "--opt", "lowrank.energy=1.5"], ["energy=1.5", "must be in (0, 1]"], id="energy-out-of-range"),
        pytest.param(["--plugins", "lowrank", "--opt", "lowrank.rank=0"], ["rank=0", "must be an integer >= 1"], id="rank-out-of-range"),
        pytest.param(["--plugins", "lowrank", "--opt", "lowrank"], ["--opt 'lowrank'", "expected NAME.FIELD=VALUE"], id="malformed-opt"),
        pytest.param(["--opt", "lowrank.rank=4"], ["method 'lowrank' is not in --plugins"], id="opt-for-unselected-method"),
        pytest.param(["--plugins", "lowrank", "--opt", "nosuch.rank=4"], ["unknown method 'nosuch'", "lowrank"], id="opt-for-unknown-method"),
        pytest.param(["--target", "tpu"], ["unknown target 'tpu'", "cpu", "vulkan"], id="unknown-target"),
        pytest.param(["--target-opt", "vulkan.profile=valhall4"], ["--target-opt vulkan.*", "the selected target is 'cpu'"], id="target-opt-for-other-target"),
        pytest.param(["--tolerance", "-1"], ["--tolerance", "must be > 0"], id="negative-tolerance"),
        pytest.param(["--tolerance", "0"], ["--tolerance", "must be > 0"], id="zero-tolerance"),
        pytest.param(["--input-shape", "1xfoo"], ["--input-shape '1xfoo'", "1x3x32x32"], id="bad-input-shape"),
        pytest.param(["--input-shape", "4x256:complex"], ["--input-shape '4x256:complex'", "float32", "int64"], id="bad-input-dtype"),
    ],
)
def test_bad_names_and_options(tmp_path, args, fragments):
    proc, out = compile_into(tmp_path, "examples.models:mlp", *args)
    assert_clean_failure(proc, *fragments, out_dir=out)


def test_artifact_name_must_end_in_vmfb(tmp_path):
    out = tmp_path / "out"
    proc = run_optc("compile", "examples.models:mlp", "-o", out / "m.bin")
    assert_clean_failure(proc, "m.bin", ".vmfb", out_dir=out)


# --------------------------------------------------------------------------- optc run


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mlp") / "mlp.vmfb"
    proc = run_optc("compile", "examples.models:mlp", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.with_suffix(".json").is_file()
    return out


def test_run_missing_artifact(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((4, 256), np.float32))
    out = tmp_path / "out"
    proc = run_optc("run", tmp_path / "none.vmfb", "--input", x, "--output", out / "y.npy")
    assert_clean_failure(proc, "artifact not found", "none.vmfb", out_dir=out)


def test_run_input_of_wrong_shape(tmp_path, mlp_artifact):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 7), np.float32))
    out = tmp_path / "out"
    proc = run_optc("run", mlp_artifact, "--input", x, "--output", out / "y.npy")
    assert_clean_failure(proc, "3x7", "4x256:float32", out_dir=out)


def test_run_input_of_wrong_shape_without_report(tmp_path, mlp_artifact):
    """Without the .json beside the artifact, the runtime's shape check speaks;
    it must still be one line naming the expected shape."""
    bare = tmp_path / "bare.vmfb"
    shutil.copy(mlp_artifact, bare)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 7), np.float32))
    out = tmp_path / "out"
    proc = run_optc("run", bare, "--input", x, "--output", out / "y.npy")
    assert_clean_failure(proc, "4x256", out_dir=out)


def test_run_input_that_is_not_npy(tmp_path, mlp_artifact):
    x = tmp_path / "x.npy"
    x.write_text("hello, not an array\n")
    out = tmp_path / "out"
    proc = run_optc("run", mlp_artifact, "--input", x, "--output", out / "y.npy")
    assert_clean_failure(proc, "x.npy", "not a .npy/.npz array file", out_dir=out)


def test_run_missing_input_file(tmp_path, mlp_artifact):
    out = tmp_path / "out"
    proc = run_optc("run", mlp_artifact, "--input", tmp_path / "absent.npy", "--output", out / "y.npy")
    assert_clean_failure(proc, "absent.npy", "file not found", out_dir=out)


def test_run_artifact_that_is_not_a_vmfb(tmp_path):
    junk = tmp_path / "junk.vmfb"
    junk.write_bytes(os.urandom(2000))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((4, 256), np.float32))
    out = tmp_path / "out"
    proc = run_optc("run", junk, "--input", x, "--output", out / "y.npy")
    assert_clean_failure(proc, "junk.vmfb", out_dir=out)


# --------------------------------------------------------------------------- bcr / admm / sample data


@pytest.mark.parametrize("opt, fragment", [("bcr.col_keep=1.5", "col_keep=1.5: keep rates must be in (0, 1]"),
                                           ("bcr.row_keep=0", "row_keep=0.0: keep rates must be in (0, 1]")])
def test_keep_rate_outside_zero_one(tmp_path, opt, fragment):
    proc, out = compile_into(tmp_path, "--plugins", "bcr", "--opt", opt, "examples.models:mlp")
    assert_clean_failure(proc, fragment, out_dir=out)


def test_block_size_that_does_not_fit_a_named_layer(tmp_path):
    proc, out = compile_into(tmp_path, "--plugins", "bcr", "--opt", "bcr.block=16", "--opt", "bcr.layers=0.weight,4.weight", "examples.models:mlp")
    assert_clean_failure(proc, "block=16 does not fit layer 4.weight (10 output rows)", "bcr.skip=4.weight", out_dir=out)


def test_admm_without_calibration_data(tmp_path):
    proc, out = compile_into(tmp_path, "--plugins", "bcr,admm", "examples.models:mlp")
    assert_clean_failure(proc, "'admm' needs calibration data", "--calib", out_dir=out)


@pytest.mark.parametrize("flag", ["--calib", "--eval"])
def test_sample_data_whose_shape_does_not_match_the_model(tmp_path, flag):
    data, good = tmp_path / "wrong.npz", tmp_path / "good.npz"
    np.savez(data, x=np.zeros((8, 255), np.float32), y=np.zeros(8, np.int64))  # mlp takes (N, 256)
    np.savez(good, x=np.zeros((8, 256), np.float32), y=np.zeros(8, np.int64))
    other = "--eval" if flag == "--calib" else "--calib"
    proc, out = compile_into(tmp_path, "--plugins", "admm", flag, data, other, good, "examples.models:mlp")
    assert_clean_failure(proc, f"{flag} ", "wrong.npz: x has shape (8, 255) but the model takes (N, 256) float32", out_dir=out)
