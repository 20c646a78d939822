"""examples/apps: the Python app in a fresh environment with only the IREE runtime
and numpy, the C app built against the IREE runtime sources in third_party/, both
classifying the digits test split with an optc artifact, and the iree-run-module
line of the README."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, optc_cli, vulkan_or_skip

APPS = REPO / "examples" / "apps"
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BATCH = 7  # 360 test images: 51 full batches and one padded one


@pytest.fixture(scope="module")
def cnn(digits, tmp_path_factory) -> dict:
    """The digits CNN compiled at batch 7 with class labels and --eval; its report;
    the test split as images.npy + labels."""
    out = tmp_path_factory.mktemp("apps")
    vmfb = out / "digits_cnn.vmfb"
    optc_cli(
        "compile", "--batch", str(BATCH), "--labels", ",".join(LABELS), "--eval", str(digits["test"]),
        str(digits["cnn"]), "-o", str(vmfb), check=True,
    )  # fmt: skip
    with np.load(digits["test"], allow_pickle=False) as test:
        x, y = test["x"], test["y"]
    np.save(out / "images.npy", x)
    return {"vmfb": vmfb, "report": json.loads(vmfb.with_suffix(".json").read_text()), "images": out / "images.npy", "x": x, "y": y, "dir": out}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """An artifact of another model (examples.models:mlp, inputs 4x256)."""
    vmfb = tmp_path_factory.mktemp("mlp") / "mlp.vmfb"
    optc_cli("compile", "examples.models:mlp", "-o", str(vmfb), check=True)
    return vmfb


@pytest.fixture(scope="module")
def bare_module(tmp_path_factory) -> Path:
    """A valid IREE module that optc did not compile (no optc metadata)."""
    import iree.compiler as ic

    vmfb = tmp_path_factory.mktemp("bare") / "bare.vmfb"
    vmfb.write_bytes(
        ic.compile_str(
            "func.func @main(%x: tensor<1x8x8xf32>) -> tensor<1x8x8xf32> { return %x : tensor<1x8x8xf32> }",
            target_backends=["llvm-cpu"],
            extra_args=["--iree-llvmcpu-target-cpu=generic"],
        )
    )
    return vmfb


def _predictions(stdout: str) -> list[str]:
    lines = [ln.split() for ln in stdout.splitlines()]
    assert [int(i) for i, _ in lines] == list(range(len(lines)))
    return [label for _, label in lines]


def _top1(labels: list[str], y: np.ndarray) -> float:
    return float(np.mean([LABELS.index(label) == t for label, t in zip(labels, y)]))


# --------------------------------------------------------------------------- the Python app


@pytest.fixture(scope="session")
def app_python() -> Path:
    """A virtual environment with only examples/apps/python/requirements.txt, built
    from scratch once per requirements (cached under build/app_venv/<hash>)."""
    requirements = APPS / "python" / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:16]
    venv = REPO / "build" / "app_venv" / key
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # from the base interpreter, no site packages
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(requirements)]
        subprocess.run(pip, check=True, capture_output=True)
        (venv / ".complete").touch()
    return python


def run_python_app(python: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    # Run from outside the repository, so nothing of optc's tree is importable.
    return subprocess.run([str(python), str(APPS / "python" / "classify.py"), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_python_app_environment_has_only_the_runtime_and_numpy(app_python, tmp_path):
    freeze = subprocess.run([str(app_python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    assert sorted(ln.split("==")[0].lower().replace("_", "-") for ln in freeze.split()) == ["iree-base-runtime", "ml-dtypes", "numpy"]
    probe = "import importlib.util as u; print([m for m in ('torch', 'optc', 'torch_mlir', 'iree.compiler') if u.find_spec(m.split('.')[0]) and u.find_spec(m)])"
    assert subprocess.run([str(app_python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_python_app_top1_equals_the_report(app_python, cnn):
    proc = run_python_app(app_python, cnn["vmfb"], cnn["images"], cwd=cnn["dir"])
    assert proc.returncode == 0, proc.stderr
    labels = _predictions(proc.stdout)
    assert len(labels) == len(cnn["y"]) and set(labels) <= set(LABELS)  # names from the module's metadata
    assert _top1(labels, cnn["y"]) == cnn["report"]["accuracy"]["artifact"]


def test_python_app_repeat_reports_latency(app_python, cnn):
    proc = run_python_app(app_python, "--repeat", "5", cnn["vmfb"], cnn["images"], cwd=cnn["dir"])
    assert proc.returncode == 0, proc.stderr
    assert cnn["report"]["target"]["options"]["driver"] == "local-task"  # 7 images: 51 M MACs per call
    assert re.search(rf"latency: 5 calls of batch {BATCH} on local-task: median [0-9.]+ ms", proc.stderr), proc.stderr


def test_python_app_runs_a_small_artifact_on_the_driver_its_metadata_names(app_python, tmp_path):
    vmfb = tmp_path / "mlp.vmfb"
    optc_cli("compile", "examples.models:mlp", "-o", str(vmfb), check=True)
    assert json.loads(vmfb.with_suffix(".json").read_text())["target"]["options"]["driver"] == "local-sync"
    images = tmp_path / "x.npy"
    np.save(images, np.random.default_rng(0).normal(size=(6, 256)).astype(np.float32))
    proc = run_python_app(app_python, "--repeat", "2", vmfb, images, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"latency: 2 calls of batch 4 on local-sync: median", proc.stderr), proc.stderr
    pool = run_python_app(app_python, "--device", "local-task", vmfb, images, cwd=tmp_path)  # either CPU driver runs it
    assert pool.returncode == 0 and pool.stdout == proc.stdout, pool.stderr


def test_python_app_runs_a_vulkan_artifact(app_python, digits, cnn, tmp_path):
    vulkan_or_skip()
    vmfb = tmp_path / "digits_cnn_vulkan.vmfb"
    optc_cli("compile", "--target", "vulkan", "--labels", ",".join(LABELS), str(digits["cnn"]), "-o", str(vmfb), check=True)
    few = tmp_path / "few.npy"
    np.save(few, cnn["x"][:6])  # lavapipe takes ~0.5 s per image on a busy 2-core machine
    on_gpu = run_python_app(app_python, "--device", "vulkan", vmfb, few, cwd=tmp_path)
    assert on_gpu.returncode == 0, on_gpu.stderr
    on_cpu = run_python_app(app_python, cnn["vmfb"], few, cwd=tmp_path)
    assert _predictions(on_gpu.stdout) == _predictions(on_cpu.stdout)
    by_default = run_python_app(app_python, vmfb, few, cwd=tmp_path)  # the device the metadata names
    assert by_default.returncode == 0 and by_default.stdout == on_gpu.stdout, by_default.stderr
    wrong_device = run_python_app(app_python, "--device", "local-task", vmfb, few, cwd=tmp_path)
    _assert_one_line(wrong_device, "compiled for optc target 'vulkan'", "--device vulkan")


# --------------------------------------------------------------------------- the C app


@pytest.fixture(scope="session")
def app_c() -> Path:
    """scripts/build_c_app.sh: the IREE runtime from third_party/ and the app, cached
    under build/c_app (about a minute on 2 cores the first time, seconds after)."""
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on this machine")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_c_app.sh")], cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    return REPO / proc.stdout.strip().splitlines()[-1]


def run_c_app(binary: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=600)


def test_c_app_predicts_what_the_python_app_does(app_c, app_python, cnn):
    c = run_c_app(app_c, cnn["vmfb"], cnn["images"])
    assert c.returncode == 0, c.stderr
    py = run_python_app(app_python, cnn["vmfb"], cnn["images"], cwd=cnn["dir"])
    assert c.stdout == py.stdout
    assert _top1(_predictions(c.stdout), cnn["y"]) == cnn["report"]["accuracy"]["artifact"]


def test_c_app_runs_a_small_artifact_on_the_driver_its_metadata_names(app_c, tmp_path):
    vmfb = tmp_path / "mlp.vmfb"
    optc_cli("compile", "examples.models:mlp", "-o", str(vmfb), check=True)  # 0.53 M MACs: cpu.driver=auto picks local-sync
    images = tmp_path / "x.npy"
    np.save(images, np.random.default_rng(0).normal(size=(6, 256)).astype(np.float32))
    proc = run_c_app(app_c, "--repeat", "2", vmfb, images)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"latency: 2 calls of batch 4 on local-sync: median", proc.stderr), proc.stderr
    pool = run_c_app(app_c, "--device", "local-task", "--repeat", "2", vmfb, images)
    assert pool.returncode == 0 and pool.stdout == proc.stdout, pool.stderr
    assert "on local-task" in pool.stderr


def test_c_app_repeat_reports_latency(app_c, cnn):
    proc = run_c_app(app_c, "--repeat", "5", cnn["vmfb"], cnn["images"])
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"latency: 5 calls of batch {BATCH} on local-task: median [0-9.]+ ms", proc.stderr), proc.stderr


@pytest.fixture(scope="module")
def cnn_dynamic(digits, cnn) -> Path:
    """The digits CNN compiled with --dynamic-batch (batch ? in its metadata)."""
    vmfb = cnn["dir"] / "digits_cnn_dynamic.vmfb"
    optc_cli("compile", "--dynamic-batch", "--labels", ",".join(LABELS), str(digits["cnn"]), "-o", str(vmfb), check=True)
    return vmfb


def test_apps_classify_with_a_dynamic_batch_artifact(app_python, app_c, cnn, cnn_dynamic):
    """Both apps run up to 32 images per call through an artifact that takes any batch
    (360 images: 11 calls of 32, then 8), and predict what the fixed-batch one does."""
    py = run_python_app(app_python, cnn_dynamic, cnn["images"], cwd=cnn["dir"])
    assert py.returncode == 0, py.stderr
    c = run_c_app(app_c, cnn_dynamic, cnn["images"])
    assert c.returncode == 0, c.stderr
    fixed = run_python_app(app_python, cnn["vmfb"], cnn["images"], cwd=cnn["dir"])
    assert py.stdout == c.stdout == fixed.stdout
    timed = run_python_app(app_python, "--repeat", "3", cnn_dynamic, cnn["images"], cwd=cnn["dir"])
    assert re.search(r"latency: 3 calls of batch 32 on local-task", timed.stderr), timed.stderr


# --------------------------------------------------------------------------- bad input, both apps


def _assert_one_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("classify: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    assert proc.stdout == ""


@pytest.fixture(params=["python", "c"])
def app(request, cnn):
    """Runs one of the two apps with ARGS; returns the process."""
    if request.param == "python":
        python = request.getfixturevalue("app_python")
        return lambda *args: run_python_app(python, *args, cwd=cnn["dir"])
    binary = request.getfixturevalue("app_c")
    return lambda *args: run_c_app(binary, *args)


def test_apps_refuse_images_of_the_wrong_shape(app, cnn, tmp_path):
    images = tmp_path / "big.npy"
    np.save(images, np.zeros((3, 16, 16), np.float32))
    _assert_one_line(app(cnn["vmfb"], images), "big.npy", "3x16x16", "takes images of 8x8")


def test_apps_refuse_images_that_are_not_float32(app, cnn, tmp_path):
    images = tmp_path / "f64.npy"
    np.save(images, cnn["x"][:3].astype(np.float64))
    _assert_one_line(app(cnn["vmfb"], images), "f64.npy", "float32")


def test_apps_refuse_a_missing_module(app, cnn, tmp_path):
    _assert_one_line(app(tmp_path / "none.vmfb", cnn["images"]), "none.vmfb")


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_apps_refuse_a_corrupt_module(app, cnn, tmp_path, damage):
    bad = tmp_path / "bad.vmfb"
    data = cnn["vmfb"].read_bytes()
    bad.write_bytes(os.urandom(4096) if damage == "random" else data[: len(data) // 3])
    _assert_one_line(app(bad, cnn["images"]), "bad.vmfb", "not an IREE module")


def test_apps_refuse_an_artifact_of_another_model(app, cnn, other_model):
    _assert_one_line(app(other_model, cnn["images"]), "images.npy", "mlp.vmfb", "takes images of 256", "another model")


def test_apps_refuse_a_module_without_optc_metadata(app, cnn, bare_module):
    _assert_one_line(app(bare_module, cnn["images"]), "bare.vmfb", "no optc metadata")


# --------------------------------------------------------------------------- IREE's own tool


def test_iree_run_module_line_of_the_readme(cnn, tmp_path):
    """`iree-run-module --module=ART.vmfb --function=main --device=local-task --input=@x.npy`
    (the README's line) runs the artifact and prints the same logits' argmax."""
    x = tmp_path / "x.npy"
    np.save(x, cnn["x"][:BATCH])
    tool = Path(sys.executable).parent / "iree-run-module"
    proc = subprocess.run(
        [str(tool), f"--module={cnn['vmfb']}", "--function=main", "--device=local-task", f"--input=@{x}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    printed = re.search(rf"{BATCH}x10xf32=(.*)", proc.stdout).group(1)
    logits = np.array([[float(v) for v in row.split()] for row in re.findall(r"\[([^\[\]]+)\]", printed)])
    assert logits.shape == (BATCH, 10)
    readme = (REPO / "README.md").read_text()
    assert "iree-run-module --module=out/digits_cnn.vmfb --function=main --device=local-task --input=@" in readme
    ours = subprocess.run(
        [sys.executable, "-m", "optc.cli", "run", str(cnn["vmfb"]), "--input", str(x), "--output", str(tmp_path / "y.npy")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert ours.returncode == 0
    np.testing.assert_allclose(logits, np.load(tmp_path / "y.npy"), rtol=1e-4, atol=1e-4)
