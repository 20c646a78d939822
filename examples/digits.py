"""Two small trained classifiers for optc: a CNN and an LSTM on handwritten digits.

The data is scikit-learn's bundled ``load_digits`` (1797 8x8 images; it ships
inside scikit-learn, so nothing is downloaded). ``build`` trains both models
deterministically (about 10 s on one CPU thread) and writes:

    digits_cnn.pt2, digits_lstm.pt2  torch.export archives, example input (1, 8, 8) float32
    digits_calib.npz                 x (1024, 8, 8) float32, y (1024,) int64: a subset of the training split
    digits_test.npz                  x (N, 8, 8) float32, y (N,) int64: the held-out split

Inputs are pixels / 16, standardized with the training split's mean and std.

``build_multiscale`` makes the same digits with real scale variation: each 8x8
digit is resized to a random size (10 to 30 pixels) and drawn at a random place
on a 32x32 canvas (seeded). A small global-pooling CNN (its convs take any
input size) is trained on it, at 32x32 and, resized, at 24x24 and 16x16 (as a
dynamic-resolution backbone is), and saved with its data:

    multiscale_cnn.pt2               example input (1, 32, 32) float32
    multiscale_calib.npz             x (1024, 32, 32) float32, y (1024,) int64
    multiscale_test.npz              x (N, 32, 32) float32, y (N,) int64

    python -m examples.digits [--out out/digits] [--multiscale]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 0
N_TEST = 360
N_CALIB = 1024


class DigitsCNN(nn.Module):
    """Three 3x3 convs (64, 128, 128 channels) with two 2x2 max-pools, then a 2-layer MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)))


class DigitsLSTM(nn.Module):
    """An LSTM reading the image row by row (8 steps of 8 pixels), classifying from the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 128, num_layers=1, batch_first=True)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class MultiscaleCNN(nn.Module):
    """Four 3x3 convs (16, 32, 32, 64 channels) with two 2x2 max-pools, global
    average pooling and one linear layer: it classifies images of any size."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)))


MULTISCALE_CANVAS = 32
MULTISCALE_SIZES = (10, 30)  # drawn digit sizes in pixels, inclusive
MULTISCALE_TRAIN_RESOLUTIONS = (32, 24, 16)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) images resized to (N, size, size): bilinear with antialiasing
    (drnet resizes the same way inside the compiled module)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return nn.functional.interpolate(x.unsqueeze(1), size=(size, size), mode="bilinear", antialias=True, align_corners=False).squeeze(1)


def multiscale_images(images: np.ndarray, seed: int, canvas: int = MULTISCALE_CANVAS) -> np.ndarray:
    """Each 8x8 image (values in [0, 1]) resized to a random size and drawn at a random place on a blank canvas."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(images), canvas, canvas), np.float32)
    lo, hi = MULTISCALE_SIZES[0], min(MULTISCALE_SIZES[1], canvas)
    for i, img in enumerate(images):
        size = int(rng.integers(lo, hi + 1))
        top, left = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
        out[i, top:top + size, left:left + size] = resize(torch.from_numpy(img[None].astype(np.float32)), size)[0].numpy()
    return out


def multiscale_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits' train/calib/test split (as :func:`splits`) drawn on the multi-scale canvas."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = multiscale_images(digits.images / 16.0, seed=SEED)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    test, train = order[:N_TEST], order[N_TEST:]
    # a second drawing of each training digit (another size and place) doubles the training set
    again = multiscale_images(digits.images[train] / 16.0, seed=SEED + 1)
    mean, std = x[train].mean(), x[train].std()
    x, again = ((x - mean) / std).astype(np.float32), ((again - mean) / std).astype(np.float32)
    calib = train[:N_CALIB]
    return {
        "train": (np.concatenate([x[train], again]), np.concatenate([y[train], y[train]])),
        "calib": (x[calib], y[calib]),
        "test": (x[test], y[test]),
    }


def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic train / calib / test splits; calib is a subset of train."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    test, train = order[:N_TEST], order[N_TEST:]
    mean, std = x[train].mean(), x[train].std()
    x = ((x - mean) / std).astype(np.float32)
    calib = train[:N_CALIB]
    return {"train": (x[train], y[train]), "calib": (x[calib], y[calib]), "test": (x[test], y[test])}


def accuracy(model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on inputs ``x`` (N, 8, 8) and labels ``y`` (N,), in [0, 1].

    Runs one sample per call: the exported programs are specialized to batch 1."""
    x = torch.as_tensor(x)
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 1]) for i in range(len(x))]).argmax(dim=1)
    return float((pred == torch.as_tensor(y)).float().mean())


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, resolutions: tuple[int, ...] = ()) -> nn.Module:
    """Adam on cross-entropy; with ``resolutions``, each batch is resized to one of them in turn."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    step = 0
    for _ in range(epochs):
        for idx in torch.randperm(len(yt)).split(64):
            xb = resize(xt[idx], resolutions[step % len(resolutions)]) if resolutions else xt[idx]
            step += 1
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yt[idx]).backward()
            opt.step()
    return model.eval()


def export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # nn.LSTM's _flat_weights: benign, the weights are exported as parameters
        warnings.filterwarnings("ignore", "The tensor attributes", UserWarning)
        torch.export.save(torch.export.export(model.eval(), (example,)), str(path))


def build(out_dir: Path, force: bool = False) -> dict[str, Path]:
    """Train and save both models and the calib/test data under ``out_dir``
    (skipped when all files exist, unless ``force``). Returns their paths."""
    out_dir = Path(out_dir)
    paths = {
        "cnn": out_dir / "digits_cnn.pt2",
        "lstm": out_dir / "digits_lstm.pt2",
        "calib": out_dir / "digits_calib.npz",
        "test": out_dir / "digits_test.npz",
    }
    if not force and all(p.exists() for p in paths.values()):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    data = splits()
    x, y = data["train"]
    example = torch.from_numpy(data["calib"][0][:1]).clone()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast as 2 threads on these tiny batches, several times faster on a busy machine
    try:
        torch.manual_seed(SEED)
        export(train(DigitsCNN(), x, y, epochs=15, lr=1e-3), example, paths["cnn"])
        torch.manual_seed(SEED)
        export(train(DigitsLSTM(), x, y, epochs=20, lr=3e-3), example, paths["lstm"])
    finally:
        torch.set_num_threads(threads)
    for name in ("calib", "test"):
        np.savez(paths[name], x=data[name][0], y=data[name][1])
    return paths


def build_multiscale(out_dir: Path, force: bool = False, epochs: int = 12) -> dict[str, Path]:
    """Train and save the multi-scale digits CNN and its calib/test data under
    ``out_dir`` (skipped when all files exist, unless ``force``). Returns their paths.
    Fewer ``epochs`` give a worse model quickly (tests)."""
    out_dir = Path(out_dir)
    paths = {"cnn": out_dir / "multiscale_cnn.pt2", "calib": out_dir / "multiscale_calib.npz", "test": out_dir / "multiscale_test.npz"}
    if not force and all(p.exists() for p in paths.values()):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    data = multiscale_splits()
    x, y = data["train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        model = train(MultiscaleCNN(), x, y, epochs=epochs, lr=3e-3, resolutions=MULTISCALE_TRAIN_RESOLUTIONS)
    finally:
        torch.set_num_threads(threads)
    export(model, torch.from_numpy(data["calib"][0][:1]).clone(), paths["cnn"])
    for name in ("calib", "test"):
        np.savez(paths[name], x=data[name][0], y=data[name][1])
    return paths


def main() -> None:
    from optc.load import load_model  # refuses pickled payloads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/digits"), help="output directory (default out/digits)")
    parser.add_argument("--force", action="store_true", help="retrain even if the files exist")
    parser.add_argument("--multiscale", action="store_true", help="build the multi-scale digits CNN and data instead")
    args = parser.parse_args()
    if args.multiscale:
        paths = build_multiscale(args.out, force=args.force)
        with np.load(paths["test"]) as test:
            x, y = test["x"], test["y"]
        from optc.plugins.drnet import backbone_module

        model = backbone_module(load_model(str(paths["cnn"])))  # runs at other sizes
        for res in MULTISCALE_TRAIN_RESOLUTIONS:
            print(f"multiscale cnn at {res}x{res}: test top-1 {accuracy(model, resize(torch.from_numpy(x), res), y):.4f} ({len(y)} samples)")
        print(f"{paths['cnn']}  calib: {paths['calib']}  test: {paths['test']}")
        return
    paths = build(args.out, force=args.force)
    with np.load(paths["test"]) as test:
        x, y = test["x"], test["y"]
    for name in ("cnn", "lstm"):
        model = load_model(str(paths[name])).module
        print(f"{name}: test top-1 {accuracy(model, x, y):.4f} ({len(y)} samples)  {paths[name]}")
    print(f"calib: {paths['calib']}  test: {paths['test']}")


if __name__ == "__main__":
    main()
