"""`optc compile --batch N` (methods, verification, --eval at batch N) and `optc run`
feeding any number of samples through a batch artifact. The digits .pt2 archive at
another batch is covered by tests/examples/test_apps.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from optc.metadata import optc_info, read
from tests.e2e.test_bad_input import assert_clean_failure, run_optc

BATCH = 3
SAMPLES = 10  # three full batches and one padded


class _FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(1, 16))  # hard-codes batch 1


def fixed_batch():
    """A model whose code fixes its batch size."""
    return _FixedBatch().eval(), (torch.zeros(1, 4, 4),)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """examples.models:mlp inputs with (arbitrary) labels, as a sample file."""
    path = tmp_path_factory.mktemp("samples") / "mlp.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((SAMPLES, 256)).astype(np.float32), y=rng.integers(0, 10, SAMPLES))
    return path


@pytest.fixture(scope="module")
def mlp_b3(tmp_path_factory, samples) -> Path:
    out = tmp_path_factory.mktemp("b3") / "mlp.vmfb"
    proc = run_optc("compile", "--batch", BATCH, "--eval", samples, "examples.models:mlp", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


def _eager_mlp(x: np.ndarray) -> np.ndarray:
    from examples.models import mlp

    model, _ = mlp()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_compile_at_batch_n(mlp_b3, samples):
    report = json.loads(mlp_b3.with_suffix(".json").read_text())
    assert report["inputs"] == [{"shape": [BATCH, 256], "dtype": "float32"}]
    assert report["verification"]["passed"]
    info = optc_info(read(mlp_b3))
    assert info["inputs"][0]["shape"] == [BATCH, 256] and info["outputs"][0]["shape"] == [BATCH, 10]
    acc = report["accuracy"]
    assert acc["samples"] == SAMPLES and acc["artifact"] == acc["original"]


def test_run_feeds_a_whole_sample_file_through_a_batch_artifact(mlp_b3, samples, tmp_path):
    out = tmp_path / "logits.npy"
    proc = run_optc("run", mlp_b3, "--input", samples, "--output", out)  # y in the sample file is not an input
    assert proc.returncode == 0, proc.stderr
    logits = np.load(out)
    with np.load(samples) as data:
        x, y = data["x"], data["y"]
    assert logits.shape == (SAMPLES, 10)  # the padding of the last batch is dropped
    np.testing.assert_allclose(logits, _eager_mlp(x), rtol=1e-4, atol=1e-5)
    accuracy = json.loads(mlp_b3.with_suffix(".json").read_text())["accuracy"]["artifact"]
    assert float(np.mean(logits.argmax(axis=1) == y)) == accuracy


def test_run_exactly_one_batch_and_a_single_sample(mlp_b3, samples, tmp_path):
    with np.load(samples) as data:
        x = data["x"]
    for n in (BATCH, 1):
        np.save(tmp_path / "x.npy", x[:n])
        proc = run_optc("run", mlp_b3, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _eager_mlp(x[:n]), rtol=1e-4, atol=1e-5)


def test_methods_and_verification_at_batch_n(tmp_path, samples):
    out = tmp_path / "mlp-lowrank.vmfb"
    proc = run_optc("compile", "--batch", 5, "--plugins", "lowrank", "--opt", "lowrank.rank=16", "--eval", samples, "examples.models:mlp", "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["inputs"][0]["shape"] == [5, 256] and report["verification"]["passed"]
    assert any(c["status"] == "changed" for c in report["methods"][0]["changes"])
    assert report["totals"]["flop_reduction"] > 1.5
    assert set(report["accuracy"]) >= {"original", "compressed_reference", "artifact"}


@pytest.mark.parametrize("batch", ["0", "-2"])
def test_batch_must_be_positive(tmp_path, batch):
    out = tmp_path / "out"
    proc = run_optc("compile", "--batch", batch, "examples.models:mlp", "-o", out / "m.vmfb")
    assert_clean_failure(proc, f"--batch {batch}", "positive integer", out_dir=out)


def test_batch_of_a_model_that_fixes_it(tmp_path):
    out = tmp_path / "out"
    proc = run_optc("compile", "--batch", BATCH, "tests.e2e.test_batch:fixed_batch", "-o", out / "m.vmfb")
    assert_clean_failure(proc, f"--batch {BATCH}", "fix its batch size", out_dir=out)


def test_run_samples_that_do_not_fit_a_batch_artifact(mlp_b3, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 128), np.float32))
    out = tmp_path / "out"
    proc = run_optc("run", mlp_b3, "--input", tmp_path / "bad.npz", "--output", out / "y.npy")
    assert_clean_failure(proc, "4x128:float32", f"{BATCH}x256:float32", out_dir=out)


# --------------------------------------------------------------------------- --dynamic-batch


@pytest.fixture(scope="module")
def mlp_dynamic(tmp_path_factory, samples) -> Path:
    """mlp with --dynamic-batch and a method that leaves a structure for the next
    (bcr, then admm re-solving inside it): every batch variant compressed alike."""
    out = tmp_path_factory.mktemp("dyn") / "mlp.vmfb"
    proc = run_optc("compile", "--dynamic-batch", "--plugins", "bcr,admm", "--opt", "bcr.block=0", "--opt", "bcr.col_keep=0.5",
                    "--calib", samples, "--eval", samples, "examples.models:mlp", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_dynamic_batch_artifact_runs_any_batch(mlp_dynamic, samples, tmp_path):
    report = json.loads(mlp_dynamic.with_suffix(".json").read_text())
    assert report["inputs"] == [{"shape": [None, 256], "dtype": "float32"}]
    assert report["dynamic_batch"]["batch_sizes"] == [1, 2, 4, 8, 16, 32]
    assert report["dynamic_batch"]["chunks_max_rel_error"] < 1e-5  # checked at compile time: 3 x 4 samples run as 8 + 4
    assert report["verification"]["passed"]
    info = optc_info(read(mlp_dynamic))
    assert info["inputs"][0]["shape"] == [None, 256] and info["outputs"][0]["shape"] == [None, 10]
    # the variants share one copy of each weight: the same weight bytes as a fixed-batch compile
    fixed = tmp_path / "fixed.vmfb"
    proc = run_optc("compile", "--plugins", "bcr,admm", "--opt", "bcr.block=0", "--opt", "bcr.col_keep=0.5",
                    "--calib", samples, "examples.models:mlp", "-o", fixed)
    assert proc.returncode == 0, proc.stderr
    fixed_report = json.loads(fixed.with_suffix(".json").read_text())
    assert report["totals"]["param_bytes_after"] == fixed_report["totals"]["param_bytes_after"]
    assert report["totals"]["macs_after"] == fixed_report["totals"]["macs_after"]
    with np.load(samples) as data:
        x = data["x"]
    for n in (1, 3, SAMPLES):  # one variant; 2 + 1; 8 + 2
        np.save(tmp_path / "x.npy", x[:n])
        proc = run_optc("run", mlp_dynamic, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.save(tmp_path / "x.npy", x[:n])
        proc = run_optc("run", fixed, "--input", tmp_path / "x.npy", "--output", tmp_path / "want.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.load(tmp_path / "want.npy"), rtol=1e-5, atol=1e-6)


def test_dynamic_batch_verified_at_a_batch_no_power_of_two(tmp_path):
    """--batch 3 with --dynamic-batch: a variant at 3 joins 1, 2, 4, … 32, so the
    report's totals compare like with like."""
    out = tmp_path / "mlp.vmfb"
    proc = run_optc("compile", "--dynamic-batch", "--batch", 3, "--plugins", "lowrank", "--opt", "lowrank.rank=16", "examples.models:mlp", "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["dynamic_batch"]["batch_sizes"] == [1, 2, 3, 4, 8, 16, 32]
    assert report["dynamic_batch"]["verified_at_batch"] == 3
    assert report["totals"]["flop_reduction"] > 1.5


def test_dynamic_batch_of_a_model_that_fixes_it(tmp_path):
    out = tmp_path / "out"
    proc = run_optc("compile", "--dynamic-batch", "tests.e2e.test_batch:fixed_batch", "-o", out / "m.vmfb")
    assert_clean_failure(proc, "--dynamic-batch", "fix its batch size", out_dir=out)


def test_dynamic_batch_of_a_sequence_first_rnn_fails_its_chunk_check(tmp_path):
    """Dimension 0 of a sequence-first GRU is time: chunks of it would restart the
    state, so the compile-time chunk check refuses the artifact instead of writing it."""
    out = tmp_path / "out"
    proc = run_optc("compile", "--dynamic-batch", "tests.e2e.probe_models:sequence_first", "-o", out / "m.vmfb")
    assert_clean_failure(proc, "--dynamic-batch", "run in chunks differs", "sequence-first", out_dir=out)


def test_dynamic_batch_refuses_a_whole_program_method(tmp_path):
    out = tmp_path / "out"
    proc = run_optc("compile", "--dynamic-batch", "--plugins", "drnet", "--opt", "drnet.resolutions=32,24,16", "--calib", tmp_path / "none.npz", "examples.models:cnn", "-o", out / "m.vmfb")
    assert_clean_failure(proc, "--dynamic-batch", "drnet", out_dir=out)
