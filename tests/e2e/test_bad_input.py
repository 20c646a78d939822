"""Every bad input: one `optc: error:` line on stderr, no traceback, a non-zero
exit status, and no output file left behind."""

import os

import numpy as np
import pytest
import torch

from tests.conftest import optc_cli


def assert_clean_failure(proc, *fragments, out_dir=None, status=2):
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("optc: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


def compile_into(tmp_path, *args):
    out = tmp_path / "out"
    return optc_cli("compile", *args, "-o", str(out / "m.vmfb")), out


@pytest.fixture(scope="module")
def linear_archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "linear.pt2"
    ep = torch.export.export(torch.nn.Linear(4, 3).eval(), (torch.randn(2, 4),))
    torch.export.save(ep, str(path))
    return path


def test_missing_model_file(tmp_path):
    proc, out = compile_into(tmp_path, str(tmp_path / "nope.pt2"))
    assert_clean_failure(proc, "model file not found", "nope.pt2", out_dir=out)


def test_random_bytes_named_pt2(tmp_path):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(os.urandom(4096))
    proc, out = compile_into(tmp_path, str(bad))
    assert_clean_failure(proc, "is not a model optc can read", "torch.export archive", out_dir=out)


def test_truncated_archive(tmp_path, linear_archive):
    data = linear_archive.read_bytes()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(data[: len(data) // 2])
    proc, out = compile_into(tmp_path, str(cut))
    assert_clean_failure(proc, "cut.pt2", out_dir=out)
    assert "corrupt or truncated" in proc.stderr or "is not a model optc can read" in proc.stderr


def test_archive_loads_with_its_example_inputs(tmp_path, linear_archive):
    proc, out = compile_into(tmp_path, str(linear_archive))
    assert proc.returncode == 0, proc.stderr
    assert (out / "m.vmfb").exists() and (out / "m.json").exists()


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
    proc, out = compile_into(tmp_path, str(path), "--input-shape", "1x4")
    assert_clean_failure(proc, "pickled module", "--trust", out_dir=out)
    proc, out = compile_into(tmp_path, str(path), "--trust", "--input-shape", "1x4")
    assert proc.returncode == 0, proc.stderr
    assert (out / "m.vmfb").exists()


def test_torchscript_is_refused_clearly(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(path))
    proc, out = compile_into(tmp_path, str(path))
    assert_clean_failure(proc, "TorchScript", "torch.export.save", out_dir=out)


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--plugins", "nosuchmethod"], ["unknown method 'nosuchmethod'", "installed methods:", "lowrank"]),
        (["--plugins", "lowrank", "--opt", "lowrank.nosuch=1"], ["unknown option lowrank.nosuch", "rank", "energy"]),
        (["--plugins", "lowrank", "--opt", "lowrank.rank=abc"], ["lowrank.rank='abc': expected int"]),
        (["--plugins", "lowrank", "--opt", "lowrank.rank=0"], ["rank=0: must be an integer >= 1"]),
        (["--plugins", "lowrank", "--opt", "lowrank.energy=1.5"], ["energy=1.5: must be in (0, 1]"]),
        (["--plugins", "lowrank", "--opt", "lowrank"], ["expected NAME.FIELD=VALUE"]),
        (["--opt", "lowrank.rank=4"], ["method 'lowrank' is not in --plugins"]),
        (["--target", "tpu"], ["unknown target 'tpu'", "cpu", "vulkan"]),
        (["--target-opt", "vulkan.profile=mali"], ["the selected target is 'cpu'"]),
        (["--tolerance", "-1"], ["--tolerance -1.0: must be > 0"]),
        (["--input-shape", "1xfoo"], ["--input-shape '1xfoo'"]),
    ],
)
def test_bad_names_and_options(tmp_path, args, fragments):
    proc, out = compile_into(tmp_path, "examples.models:mlp", *args)
    assert_clean_failure(proc, *fragments, out_dir=out)


def test_bad_target_option_value(tmp_path):
    proc, out = compile_into(tmp_path, "examples.models:mlp", "--target", "vulkan", "--target-opt", "vulkan.profile=mali")
    assert_clean_failure(proc, "vulkan.profile='mali'", "valhall4", out_dir=out)


def test_op_that_cannot_be_lowered_is_named(tmp_path):
    proc, out = compile_into(tmp_path, "tests.e2e.unlowerable_model:model")
    assert_clean_failure(proc, "cannot lower op", "mystery", out_dir=out)


def test_unknown_factory_module(tmp_path):
    proc, out = compile_into(tmp_path, "no_such_pkg.models:net")
    assert_clean_failure(proc, "cannot import 'no_such_pkg.models'", out_dir=out)


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp") / "mlp.vmfb"
    optc_cli("compile", "examples.models:mlp", "-o", str(out), check=True)
    return out


def test_run_missing_artifact(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 256), np.float32))
    proc = optc_cli("run", str(tmp_path / "none.vmfb"), "--input", str(tmp_path / "x.npy"))
    assert_clean_failure(proc, "artifact not found")


def test_run_wrong_input_shape(tmp_path, mlp_artifact):
    np.save(tmp_path / "x.npy", np.zeros((3, 7), np.float32))
    proc = optc_cli("run", str(mlp_artifact), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"))
    assert_clean_failure(proc, "3x7:float32", "4x256:float32")
    assert not (tmp_path / "y.npy").exists()


def test_run_input_that_is_not_npy(tmp_path, mlp_artifact):
    (tmp_path / "x.npy").write_text("hello")
    proc = optc_cli("run", str(mlp_artifact), "--input", str(tmp_path / "x.npy"))
    assert_clean_failure(proc, "is not a .npy/.npz array file")
