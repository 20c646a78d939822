"""optc.load in-process: input shapes, archives with their example inputs,
factories, and no unpickling without trust."""

from __future__ import annotations

import fractions
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from optc.errors import InputError, LoadError
from optc.load import load_model, parse_input_shape

# --------------------------------------------------------------------------- parse_input_shape


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("1x3x32x32", ((1, 3, 32, 32), "float32")),
        ("7", ((7,), "float32")),
        ("2x16:int64", ((2, 16), "int64")),
        ("2x16:int32", ((2, 16), "int32")),
        ("4x4:float16", ((4, 4), "float16")),
        ("3:bool", ((3,), "bool")),
        ("1X3", ((1, 3), "float32")),
        ("1x3:", ((1, 3), "float32")),
    ],
)
def test_parse_input_shape_good(spec, expected):
    assert parse_input_shape(spec) == expected


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("", "expected dimensions like"),
        ("1x0", "every dimension must be a positive integer"),
        ("1x-2", "every dimension must be a positive integer"),
        ("axb", "expected dimensions like"),
        ("1x", "expected dimensions like"),
        ("1.5x2", "expected dimensions like"),
        ("2x2:complex", "dtype must be one of"),
        ("2x2:float64", "dtype must be one of"),
        ("99999999999x99999999999x3", "too large"),
        ("65536x65536", "too large"),
        ("１６x2", "expected dimensions like"),
        ("1_6x2", "expected dimensions like"),
        (" 16x2", "expected dimensions like"),
        ("1" * 5000, "expected dimensions like"),
    ],
)
def test_parse_input_shape_bad(spec, fragment):
    with pytest.raises(InputError) as info:
        parse_input_shape(spec)
    assert fragment in str(info.value)
    assert repr(spec) in str(info.value)


# --------------------------------------------------------------------------- torch.export archives


@pytest.fixture()
def archive(tmp_path) -> tuple[Path, torch.Tensor]:
    x = torch.randn(2, 4)
    path = tmp_path / "lin.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 3).eval(), (x,)), str(path))
    return path, x


def test_archive_returns_its_example_inputs(archive):
    path, x = archive
    m = load_model(str(path))
    assert len(m.example_inputs) == 1
    assert torch.equal(m.example_inputs[0], x)
    assert m.exported is not None and m.source == str(path)
    assert m.module(x).shape == (2, 3)


def test_archive_input_shapes_override_its_inputs(archive):
    path, _ = archive
    m = load_model(str(path), input_shapes=["5x4"])
    assert [tuple(t.shape) for t in m.example_inputs] == [(5, 4)]
    # lowered at the new shape, not the archive's: its export is redone
    assert m.exported is None
    assert [tuple(a.shape) for a in m.export().example_inputs[0]] == [(5, 4)]
    assert load_model(str(path), input_shapes=["2x4"]).exported is not None  # the archive's own shape


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy the archive's entries (same names, same order), passing each through ``edit(name, data)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, edit(item.filename, zin.read(item)))


def test_hand_copied_archive_still_loads(archive, tmp_path):
    """The control for the tampered archives below: a verbatim copy loads."""
    path, x = archive
    copy = tmp_path / "copy.pt2"
    _rewrite(path, copy, lambda name, data: data)
    m = load_model(str(copy))
    assert torch.equal(m.example_inputs[0], x)


def test_archive_with_pickled_weights_needs_trust(archive, tmp_path):
    path, _ = archive
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith("/data/weights/model_weights_config.json") for n in names), names
    flagged = []

    def edit(name, data):
        if name.endswith("/data/weights/model_weights_config.json"):
            cfg = json.loads(data)
            key = next(iter(cfg["config"]))
            cfg["config"][key]["use_pickle"] = True
            flagged.append(key)
            return json.dumps(cfg).encode()
        return data

    bad = tmp_path / "pickled_weights.pt2"
    _rewrite(path, bad, edit)
    assert flagged
    with pytest.raises(LoadError) as info:
        load_model(str(bad))
    msg = str(info.value)
    assert "--trust" in msg and flagged[0] in msg and "pickled_weights.pt2" in msg


def test_archive_with_unsafe_sample_inputs_needs_trust(archive, tmp_path):
    """Sample inputs that weights_only loading refuses (an arbitrary class) are a pickle payload too."""
    path, _ = archive
    buf = io.BytesIO()
    torch.save(((fractions.Fraction(1, 2),), {}), buf)

    def edit(name, data):
        return buf.getvalue() if "/data/sample_inputs/" in name else data

    bad = tmp_path / "pickled_inputs.pt2"
    _rewrite(path, bad, edit)
    with pytest.raises(LoadError, match="--trust"):
        load_model(str(bad))


# --------------------------------------------------------------------------- other files


def test_missing_file(tmp_path):
    with pytest.raises(LoadError, match="model file not found"):
        load_model(str(tmp_path / "nope.pt2"))


def test_directory(tmp_path):
    with pytest.raises(LoadError, match="is a directory"):
        load_model(str(tmp_path))


def test_random_bytes(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"\x00" + os.urandom(4095))
    with pytest.raises(LoadError, match="is not a model optc can read"):
        load_model(str(path))


def test_torchscript_is_refused(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(path))
    with pytest.raises(LoadError, match="TorchScript"):
        load_model(str(path))


@pytest.fixture()
def pickled(tmp_path) -> Path:
    path = tmp_path / "pickled.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
    return path


def test_pickled_module_needs_trust(pickled):
    with pytest.raises(LoadError, match="--trust"):
        load_model(str(pickled), input_shapes=["1x4"])


def test_pickled_module_with_trust(pickled):
    with pytest.raises(LoadError, match="--input-shape"):
        load_model(str(pickled), trust=True)
    m = load_model(str(pickled), trust=True, input_shapes=["2x4"])
    assert isinstance(m.module, torch.nn.Sequential) and not m.module.training
    assert m.module(*m.example_inputs).shape == (2, 3)


def test_pickled_state_dict_is_not_a_module(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    with pytest.raises(LoadError, match="not an nn.Module"):
        load_model(str(path), trust=True, input_shapes=["1x4"])


# --------------------------------------------------------------------------- factories


def test_factory_with_inputs():
    m = load_model("examples.models:mlp")
    assert [tuple(t.shape) for t in m.example_inputs] == [(4, 256)]
    assert not m.module.training


def test_factory_without_inputs_asks_for_input_shape(tmp_path, monkeypatch):
    (tmp_path / "optc_bare_factory.py").write_text("import torch\ndef net():\n    return torch.nn.Linear(5, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoadError, match="--input-shape"):
        load_model("optc_bare_factory:net")
    m = load_model("optc_bare_factory:net", input_shapes=["3x5"])
    assert [tuple(t.shape) for t in m.example_inputs] == [(3, 5)]
    assert m.module(*m.example_inputs).shape == (3, 2)


def test_factory_returning_something_else(tmp_path, monkeypatch):
    (tmp_path / "optc_odd_factory.py").write_text("def net():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoadError, match="returned a int"):
        load_model("optc_odd_factory:net")


def test_factory_with_missing_attribute(tmp_path, monkeypatch):
    (tmp_path / "optc_fac2.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoadError, match="has no attribute 'nope'"):
        load_model("optc_fac2:nope")


def test_factory_module_that_does_not_import():
    with pytest.raises(LoadError, match="cannot import 'no_such_pkg_optc'"):
        load_model("no_such_pkg_optc:net")


def test_factory_that_raises_is_one_load_error():
    with pytest.raises(LoadError, match=r"tests.e2e.probe_models:raises raised RuntimeError: the factory itself fails"):
        load_model("tests.e2e.probe_models:raises")


def test_factory_module_that_raises_on_import(tmp_path, monkeypatch):
    (tmp_path / "explodes_on_import.py").write_text("raise ValueError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoadError, match="importing 'explodes_on_import'.*raised ValueError: boom at import"):
        load_model("explodes_on_import:net")
