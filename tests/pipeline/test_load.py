"""Loading: archives with their inputs, factories, shapes, and no unpickling without trust."""

import json
import zipfile

import pytest
import torch

from optc.errors import InputError, LoadError
from optc.load import load_model, parse_input_shape


def test_parse_input_shape():
    assert parse_input_shape("1x3x32x32") == ((1, 3, 32, 32), "float32")
    assert parse_input_shape("2x16:int64") == ((2, 16), "int64")
    for bad in ("", "1x0", "axb", "2x2:complex"):
        with pytest.raises(InputError):
            parse_input_shape(bad)


@pytest.fixture()
def archive(tmp_path):
    x = torch.randn(2, 4)
    path = tmp_path / "lin.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 3).eval(), (x,)), str(path))
    return path, x


def test_archive_carries_its_example_inputs(archive):
    path, x = archive
    m = load_model(str(path))
    assert len(m.example_inputs) == 1 and torch.equal(m.example_inputs[0], x)
    assert m.module(x).shape == (2, 3)


def test_archive_with_pickled_weights_needs_trust(archive, tmp_path):
    path, _ = archive
    bad = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                data = json.dumps(cfg).encode()
            dst.writestr(item, data)
    with pytest.raises(LoadError, match="--trust"):
        load_model(str(bad))


def test_factory_without_inputs_asks_for_input_shape(tmp_path, monkeypatch):
    (tmp_path / "bare_factory.py").write_text("import torch\ndef net():\n    return torch.nn.Linear(5, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoadError, match="--input-shape"):
        load_model("bare_factory:net")
    m = load_model("bare_factory:net", input_shapes=["3x5"])
    assert m.example_inputs[0].shape == (3, 5)


def test_factory_with_missing_attribute(tmp_path, monkeypatch):
    (tmp_path / "fac2.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LoadError, match="has no attribute 'nope'"):
        load_model("fac2:nope")
