"""examples.digits: deterministic training, the saved files, and loading through optc."""

from __future__ import annotations

import numpy as np
import pytest

from examples.digits import accuracy, build
from optc.load import load_model

# Measured (deterministic training): CNN 0.9861, LSTM 0.9722 on the 360 held-out samples.
MIN_ACCURACY = {"cnn": 0.97, "lstm": 0.95}


@pytest.fixture
def paths(digits):
    return digits


def test_files_exist(paths):
    assert set(paths) == {"cnn", "lstm", "calib", "test"}
    assert all(p.is_file() for p in paths.values())


def test_splits(paths):
    with np.load(paths["calib"], allow_pickle=False) as calib, np.load(paths["test"], allow_pickle=False) as test:
        assert calib["x"].shape == (1024, 8, 8) and calib["x"].dtype == np.float32
        assert calib["y"].shape == (1024,) and calib["y"].dtype == np.int64
        n = len(test["y"])
        assert 300 <= n <= 400
        assert test["x"].shape == (n, 8, 8) and test["x"].dtype == np.float32
        assert test["y"].shape == (n,) and test["y"].dtype == np.int64
        assert set(np.unique(test["y"])) == set(range(10))
        calib_rows = {row.tobytes() for row in calib["x"]}
        assert not any(row.tobytes() in calib_rows for row in test["x"])


@pytest.mark.parametrize("name", ["cnn", "lstm"])
def test_model_loads_and_is_accurate(paths, name):
    model = load_model(str(paths[name]))  # refuses archives with pickled payloads
    assert len(model.example_inputs) == 1
    assert tuple(model.example_inputs[0].shape) == (1, 8, 8)
    with np.load(paths["test"], allow_pickle=False) as test:
        assert accuracy(model.module, test["x"], test["y"]) >= MIN_ACCURACY[name]


def test_build_skips_when_files_exist(paths):
    mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    assert build(paths["cnn"].parent) == paths
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == mtimes
