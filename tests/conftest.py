"""Shared fixtures. Example models are small so the suite stays fast on 2 cores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `examples.*` importable, as from the CLI in the repo root

warnings.filterwarnings("ignore", category=FutureWarning)


def lowered(name: str):
    """(Model, Program) for ``examples.models:<name>``; lowering is cached, the
    returned program is a fresh clone so tests may rewrite it."""
    model, program = _lowered(name)
    return model, program.clone()


_CACHE: dict = {}


def _lowered(name: str):
    if name not in _CACHE:
        from optc.load import load_model
        from optc.lower import lower

        model = load_model(f"examples.models:{name}")
        _CACHE[name] = (model, lower(model))
    return _CACHE[name]


def filecheck(tmp_path: Path, checks: str, text: str) -> None:
    """Assert that ``text`` (IR) matches LLVM FileCheck ``checks``."""
    path = tmp_path / "checks.mlir"
    path.write_text(checks)
    proc = subprocess.run([str(Path(sys.executable).parent / "filecheck"), str(path)], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def optc_cli(*args: str, cwd: Path = REPO, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `optc` console script of this environment."""
    exe = shutil.which("optc", path=str(Path(sys.executable).parent)) or "optc"
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        raise AssertionError(f"optc {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """The trained digits CNN/LSTM (.pt2) and their calib/test .npz (trained once per session)."""
    from examples.digits import build

    return build(tmp_path_factory.mktemp("digits"))


def vulkan_or_skip() -> None:
    from optc.targets.vulkan import VulkanTarget

    ok, reason = VulkanTarget().available()
    if not ok:
        pytest.skip(f"no Vulkan device: {reason}")


@pytest.fixture(scope="session")
def multiscale_digits(tmp_path_factory) -> dict[str, Path]:
    """The multi-scale digits CNN (.pt2, briefly trained: fast, not accurate) and its calib/test .npz."""
    from examples.digits import build_multiscale

    return build_multiscale(tmp_path_factory.mktemp("multiscale"), epochs=1)
