"""Sample files are checked against the model's inputs; per-layer statistics
measured on the compiled probe equal the ones computed by hand in numpy/PyTorch."""

from pathlib import Path

import numpy as np
import pytest
import torch

from optc.calibration import Calibration, LayerData, Samples, _Products, load_samples, objective, top1
from optc.driver import _host_runner
from optc.errors import InputError
from tests.conftest import lowered


def samples_file(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


EXAMPLE = [np.zeros((1, 8, 8), np.float32)]


@pytest.mark.parametrize(
    "arrays, need_labels, fragment",
    [
        ({"x": np.zeros((5, 8, 9), np.float32)}, False, "x has shape (5, 8, 9) but the model takes (N, 8, 8) float32"),
        ({"x": np.zeros((5, 64), np.float32)}, False, "x has shape (5, 64)"),
        ({"inputs": np.zeros((5, 8, 8), np.float32)}, False, "missing array(s) x; it has inputs"),
        ({"x": np.zeros((5, 8, 8), np.float32)}, True, "missing array(s) y"),
        ({"x": np.zeros((5, 8, 8), np.int64)}, False, "x is int64 but the model takes float32"),
        ({"x": np.zeros((5, 8, 8), np.float32), "y": np.zeros(4, np.int64)}, False, "y must be integer labels of shape (5,)"),
    ],
)
def test_bad_sample_files_name_the_problem(tmp_path, arrays, need_labels, fragment):
    with pytest.raises(InputError) as e:
        load_samples(samples_file(tmp_path, **arrays), EXAMPLE, "--calib", need_labels)
    assert fragment in str(e.value) and str(e.value).startswith("--calib ")


def test_missing_and_non_npz_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_samples(tmp_path / "nope.npz", EXAMPLE, "--eval")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a numpy file"):
        load_samples(junk, EXAMPLE, "--eval")


def test_batches_pad_the_last_chunk():
    x = np.arange(5, dtype=np.float32).reshape(5, 1)
    chunks = list(Samples(Path("x"), [x], None).batches(2))
    assert [real for _, real in chunks] == [2, 2, 1]
    assert chunks[-1][0][0].ravel().tolist() == [4.0, 4.0]


def test_top1_counts_only_real_samples():
    labels = np.array([0, 1, 1])
    s = Samples(Path("x"), [np.eye(3, dtype=np.float32)[[0, 1, 1]]], labels)
    assert top1(lambda xs: xs[0], s, batch=2) == 1.0
    assert top1(lambda xs: xs[0][:, ::-1], s, batch=2) == pytest.approx(2 / 3)


def test_gram_of_a_linear_layer_is_its_input_second_moment():
    _, p = lowered("mlp")  # the first layer reads the model input directly
    x = np.random.default_rng(0).normal(size=(12, 256)).astype(np.float32)
    cal = Calibration(Samples(Path("x"), [x], None), p, _host_runner)
    expected = x.astype(np.float64).T @ x / len(x)
    assert np.allclose(cal.gram("0.weight"), expected, atol=1e-5)


def test_gram_of_a_conv_is_over_im2col_patches_in_weight_order():
    model, p = lowered("cnn")  # stem: 3x3 conv, padding 1, on the input
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    cal = Calibration(Samples(Path("x"), [x], None), p, _host_runner)
    cols = torch.nn.functional.unfold(torch.from_numpy(x).double(), 3, padding=1)  # N, C·KH·KW, L
    rows = cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).numpy()
    assert np.allclose(cal.gram("stem.weight"), rows.T @ rows / len(rows), atol=1e-6)


def test_statistics_under_changed_weights_see_them():
    _, p = lowered("mlp")
    x = np.random.default_rng(1).normal(size=(8, 256)).astype(np.float32)
    cal = Calibration(Samples(Path("x"), [x], None), p, _host_runner)
    zeroed = {"0.weight": np.zeros_like(p.params["0.weight"])}
    w2 = matrices(p)["2.weight"]
    d = cal.moments("2.weight", zeroed, w2)
    # with layer 0's weights zero, layer 2 sees relu(bias) for every sample
    h = np.maximum(p.params["0.bias"], 0).astype(np.float64)
    assert np.allclose(d.gcc, np.outer(h, h), atol=1e-5)
    assert d.sequential and not np.allclose(d.target, w2 @ cal.gram("2.weight"))


def matrices(p) -> dict[str, np.ndarray]:
    return {layer.name: layer.matrix().astype(np.float64) for layer in p.layers()}


def test_statistics_under_changed_weights_reuse_one_compiled_probe():
    """A sequential solver asks for every layer's moments under the weights solved
    so far: the probe takes weights as arguments, so it is compiled once."""
    _, p = lowered("mlp")
    x = np.random.default_rng(2).normal(size=(6, 256)).astype(np.float32)
    compiled = []

    def counting(program):
        compiled.append(program)
        return _host_runner(program)

    cal = Calibration(Samples(Path("x"), [x], None), p, counting)
    w = matrices(p)
    half = {"0.weight": p.params["0.weight"] * 0.5}
    d2 = cal.moments("2.weight", half, w["2.weight"])
    d4 = cal.moments("4.weight", {**half, "2.weight": p.params["2.weight"] * 0.5}, w["4.weight"])
    assert len(compiled) == 1
    # layer 2 reads relu(0.5·W0·x + b0): its changed input, measured on the host
    w0, b0 = p.params["0.weight"].astype(np.float64), p.params["0.bias"].astype(np.float64)
    h, hc = np.maximum(x @ w0.T + b0, 0), np.maximum(x @ (0.5 * w0).T + b0, 0)
    assert np.allclose(d2.gcc, hc.T @ hc / len(x), rtol=1e-4, atol=1e-5)
    # the outputs to reconstruct are the original model's: W2·E[h·h̃ᵀ] and E‖W2·h‖², without the in×in E[h·h̃ᵀ]
    assert np.allclose(d2.target, w["2.weight"] @ h.T @ hc / len(x), rtol=1e-4, atol=1e-5)
    assert d2.base == pytest.approx(np.sum((h @ w["2.weight"].T) ** 2) / len(x), rel=1e-5)
    assert not np.allclose(d4.gcc, cal.gram("4.weight"))
    # unchanged weights: x̃ = x, everything from the Gram matrix
    same = cal.moments("2.weight", {}, w["2.weight"])
    np.testing.assert_allclose(same.gcc, cal.gram("2.weight"), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(same.target, w["2.weight"].astype(np.float32) @ same.gcc)  # W·G, in float32 as G is
    assert same.base == pytest.approx(np.sum((h @ w["2.weight"].T) ** 2) / len(x), rel=1e-4) and not same.sequential
    assert len(compiled) == 1


class CountingSession:
    """A session that counts the calls of each function of its module."""

    def __init__(self, session, calls):
        self.session, self.calls = session, calls

    def resident(self, arrays):
        return self.session.resident(arrays)

    def entry(self, name):
        fn = self.session.entry(name)

        def call(*inputs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*inputs)

        return call


@pytest.mark.parametrize("model", ["transformer", "cnn"])
def test_sequential_moments_start_at_stored_cuts_and_equal_full_runs(monkeypatch, model):
    """Solving layers in order, each changed run starts at the last stored cut
    before the layer (the model's first segment runs only to store the
    originals and for the first changed layer), and the moments equal those of
    running the whole model every time (no room on disk for the stored results)."""
    import optc.calibration as calibration

    monkeypatch.setattr(calibration, "CHUNK_BYTES", 4096)  # several products per sum
    _, p = lowered(model)
    shape, dtype = p.example_inputs[0].shape, p.example_inputs[0].dtype
    rng = np.random.default_rng(3)
    x = rng.integers(0, 100, size=(5, *shape[1:])).astype(dtype) if dtype.kind == "i" else rng.normal(size=(5, *shape[1:])).astype(dtype)
    calls: dict[str, int] = {}
    stored = Calibration(Samples(Path("x"), [x], None), p, lambda program: CountingSession(_host_runner(program), calls))
    layers = [layer.name for layer in p.layers() if stored.measures(layer.name)]
    assert len(layers) >= 3
    w = matrices(p)
    solved, incremental = {}, []
    for name in layers:
        incremental.append(stored.moments(name, dict(solved), w[name]))
        solved[name] = p.params[name] * 0.9
    assert len(stored._probe.segments) == len(layers)  # a cut between every two layers
    assert calls["main"] == 2 * len(x)
    stored.close()

    monkeypatch.setattr(calibration.shutil, "disk_usage", lambda path: shutil_usage(0))
    whole = Calibration(Samples(Path("x"), [x], None), p, _host_runner)
    solved = {}
    for name, d in zip(layers, incremental):
        full = whole.moments(name, dict(solved), w[name])
        for a, b in ((d.gcc, full.gcc), (d.target, full.target), (d.base, full.base)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        solved[name] = p.params[name] * 0.9
    assert whole._store is None and not whole._cuts


def shutil_usage(free):
    import shutil

    return shutil._ntuple_diskusage(1 << 40, (1 << 40) - free, free)


def test_objective_is_the_relative_output_error():
    rng = np.random.default_rng(3)
    x, xc = rng.normal(size=(50, 7)), rng.normal(size=(50, 7))
    w, z = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    d = LayerData(xc.T @ xc, w @ x.T @ xc, float(np.sum((x @ w.T) ** 2)))
    expected = np.sum((x @ w.T - xc @ z.T) ** 2) / np.sum((x @ w.T) ** 2)
    assert objective(z, d) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- damaged and hostile sample files


def _good_npz(tmp_path) -> Path:
    path = tmp_path / "good.npz"
    np.savez(path, x=np.ones((5, 8, 8), np.float32), y=np.arange(5))
    return path


def _corrupt(tmp_path, how: str) -> Path:
    data = _good_npz(tmp_path).read_bytes()
    path = tmp_path / f"{how}.npz"
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bad-crc":  # flip one byte of x's array data, inside the stored zip member
        i = data.index(b"\x00\x00\x80\x3f")  # the bytes of 1.0f
        path.write_bytes(data[:i] + b"\x00\x00\x80\x40" + data[i + 4:])
    elif how == "object":
        np.savez(path, x=np.array([{"a": 1}] * 5, dtype=object), y=np.arange(5))
    elif how == "text":
        path.write_text("x,y\n1,2\n")
    elif how == "strings":
        np.savez(path, x=np.array(["a"] * 5))
    return path


@pytest.mark.parametrize("how, fragment", [
    ("truncated", "damaged or truncated"),
    ("bad-crc", "damaged or truncated"),
    ("object", "holds Python objects"),
    ("text", "not a numpy file"),
    ("strings", "expected numbers"),
])
def test_damaged_sample_files_are_one_input_error(tmp_path, how, fragment):
    with pytest.raises(InputError) as e:
        load_samples(_corrupt(tmp_path, how), EXAMPLE, "--calib")
    assert fragment in str(e.value) and str(e.value).startswith("--calib ") and "\n" not in str(e.value)
    assert "allow_pickle" not in str(e.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused_naming_the_first(tmp_path, bad):
    x = np.ones((5, 8, 8), np.float32)
    x[3, 2, 1] = bad
    with pytest.raises(InputError, match=r"--eval .*data.npz: x holds NaN or Inf \(first in sample 3,"):
        load_samples(samples_file(tmp_path, x=x, y=np.zeros(5, np.int64)), EXAMPLE, "--eval", True)


def test_negative_labels_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"y holds a negative label \(-2, first in sample 1\)"):
        load_samples(samples_file(tmp_path, x=np.ones((3, 8, 8), np.float32), y=np.array([0, -2, 1])), EXAMPLE, "--eval", True)


def test_labels_beyond_the_model_classes_are_refused():
    s = Samples(Path("e.npz"), [np.eye(3, dtype=np.float32)], np.array([0, 1, 3]))
    with pytest.raises(InputError, match=r"--eval e.npz: y holds label 3 \(sample 2\) but the model scores 3 classes"):
        top1(lambda xs: xs[0], s, 3)


def test_unknown_arrays_in_a_sample_file_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown array"):
        load_samples(samples_file(tmp_path, x=np.ones((3, 8, 8), np.float32), labels=np.zeros(3)), EXAMPLE, "--calib")


def test_products_add_each_chunk_into_one_float32_sum_in_place(monkeypatch):
    """The sums of aᵀ·a and aᵀ·b are added into in place, chunk after chunk
    (a 4608-wide layer holds one float32 in×in array, not also a full product
    and a float64 copy); the symmetric one is formed on its upper triangle and
    mirrored."""
    monkeypatch.setattr("optc.calibration.CHUNK_BYTES", 4 * 37 * 50)  # a flush every 50 rows
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((r, 37)).astype(np.float32) for r in (3, 60, 17, 90, 1)]
    ys = [rng.standard_normal((len(x), 5)).astype(np.float32) for x in xs]
    products = _Products(37, [("cc", 1, 1), ("yc", 0, 1)])
    held = []
    for x, y in zip(xs, ys):
        products.add(y, x)
        held.append({k: id(v) for k, v in products.sums.items()})
    totals = products.totals()
    assert len({tuple(h.items()) for h in held if len(h) == 2}) == 1  # the same two arrays after every flush
    x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
    assert totals["cc"].dtype == totals["yc"].dtype == np.float32
    np.testing.assert_allclose(totals["cc"], x.T @ x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(totals["yc"], y.T @ x, rtol=1e-5, atol=1e-4)
