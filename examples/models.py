"""Small example models. Each factory returns ``(module, example_inputs)`` so it
can be used directly: ``optc compile examples.models:cnn``.

They are deliberately small so the test suite stays fast on 2 cores; the
reference-size models for benchmarks live beside them.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv + batchnorm + ReLU + pooling + a residual block (with a depthwise and
    a grouped conv) + linear."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pw = nn.Conv2d(width, width, 1, groups=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.stem(x)))
        y = y + self.pw(torch.relu(self.bn2(self.dw(y))))  # residual add
        y = self.pool(y).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(y)))


class LSTMClassifier(nn.Module):
    """A 2-layer LSTM over a sequence, classifying from the last step."""

    def __init__(self, features: int = 16, hidden: int = 64, num_classes: int = 5, layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class TransformerEncoder(nn.Module):
    """``nn.TransformerEncoder`` layers over token embeddings with a classifier head."""

    def __init__(self, vocab: int = 100, dim: int = 64, heads: int = 4, ffn: int = 128, layers: int = 1, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def _seeded(seed: int = 0) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cnn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    g = _seeded()
    model = SmallCNN().eval()
    with torch.no_grad():  # non-trivial batchnorm statistics
        for bn in (model.bn1, model.bn2):
            bn.running_mean.normal_(0, 0.1, generator=g)
            bn.running_var.uniform_(0.5, 1.5, generator=g)
    return model, (torch.randn(1, 3, 32, 32, generator=g),)


def lstm() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    g = _seeded()
    return LSTMClassifier().eval(), (torch.randn(1, 12, 16, generator=g),)


def transformer() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    g = _seeded()
    return TransformerEncoder().eval(), (torch.randint(0, 100, (1, 16), generator=g),)


def mlp() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Two wide linear layers: the smallest model on which low-rank pays off."""
    g = _seeded()
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    return model, (torch.randn(4, 256, generator=g),)


def big_linear() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """One Linear(8192, 8192), 256 MiB of weights: the memory/time check of
    lowrank's truncated SVD (not for tests)."""
    g = _seeded()
    return nn.Sequential(nn.Linear(8192, 8192)).eval(), (torch.randn(1, 8192, generator=g),)
class GRUClassifier(nn.Module):
    """A GRU over a sequence (``layers`` deep, optionally bidirectional), classifying from the last step."""

    def __init__(self, features: int = 16, hidden: int = 32, num_classes: int = 5, layers: int = 1, bidirectional: bool = False):
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


class BiLSTMClassifier(nn.Module):
    """A bidirectional LSTM over a sequence, classifying from the last step."""

    def __init__(self, features: int = 16, hidden: int = 32, num_classes: int = 5, layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class LSTMCellLoop(nn.Module):
    """An LSTM written as an ``nn.LSTMCell`` stepped in Python (how many RNNs are
    written): each step does its own input-to-hidden matmul until time batching
    hoists them into one."""

    def __init__(self, features: int = 16, hidden: int = 32, num_classes: int = 5):
        super().__init__()
        self.cell = nn.LSTMCell(features, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        c = torch.zeros_like(h)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.fc(h)


class GRUCellLoop(nn.Module):
    """A GRU written as an ``nn.GRUCell`` stepped in Python."""

    def __init__(self, features: int = 16, hidden: int = 32, num_classes: int = 5):
        super().__init__()
        self.cell = nn.GRUCell(features, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.fc(h)


def gru() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    g = _seeded()
    return GRUClassifier().eval(), (torch.randn(2, 8, 16, generator=g),)


def gru2() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A 2-layer GRU."""
    g = _seeded()
    return GRUClassifier(layers=2).eval(), (torch.randn(2, 8, 16, generator=g),)


def bilstm() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A 2-layer bidirectional LSTM."""
    g = _seeded()
    return BiLSTMClassifier().eval(), (torch.randn(2, 8, 16, generator=g),)


def lstm_cells() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    g = _seeded()
    return LSTMCellLoop().eval(), (torch.randn(2, 8, 16, generator=g),)


def gru_cells() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    g = _seeded()
    return GRUCellLoop().eval(), (torch.randn(2, 8, 16, generator=g),)


def lstm2_h256() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The issue-12 goal model: a 2-layer LSTM, input 40, hidden 256, 50 steps, batch 1."""
    g = _seeded()
    return LSTMClassifier(features=40, hidden=256, num_classes=10, layers=2).eval(), (torch.randn(1, 50, 40, generator=g),)
