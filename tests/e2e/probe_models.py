"""Tiny models that probe optc's edges (issue 8): each factory returns
``(module, example_inputs)`` for ``optc compile tests.e2e.probe_models:NAME``."""

from __future__ import annotations

import torch
from torch import nn


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(tokens))


def embedding() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """nn.Embedding(50, 8): token ids must be in [0, 50)."""
    torch.manual_seed(0)
    return _Embed().eval(), (torch.tensor([[1, 7, 49, 0]]),)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + 3 * bias


def two_inputs() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Two inputs of the same shape: swapping them changes the result."""
    torch.manual_seed(0)
    return _TwoInputs().eval(), (torch.randn(2, 4), torch.randn(2, 4))


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.fc(x)
        return {"b": y, "a": 2 * y + 1}  # insertion order is not sorted order


def dict_outputs() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return _DictOut().eval(), (torch.randn(2, 4),)


class _SoftmaxPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, torch.softmax(y, -1)


def softmax_pair() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns a tensor and its softmax (failed with the cpu target's fast flags)."""
    torch.manual_seed(0)
    return _SoftmaxPair().eval(), (torch.randn(4, 16),)


class _Sort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.fc(x), dim=-1).values


def sort() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """torch.sort lowers to the tm_tensor dialect."""
    torch.manual_seed(0)
    return _Sort().eval(), (torch.randn(2, 8),)


class _NoWeights(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * 2


def no_weights() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _NoWeights().eval(), (torch.randn(2, 4),)


def raises() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    raise RuntimeError("the factory itself fails")


class _Nonzero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(x > 0).float().sum(0)


def nonzero() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """torch.nonzero: a data-dependent output shape."""
    torch.manual_seed(0)
    return _Nonzero().eval(), (torch.randn(2, 8),)


class _Branch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x * 2
        return x


def branch() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _Branch().eval(), (torch.randn(2, 4),)


class _ConvKinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Conv2d(4, 8, 3, padding=1)  # 3x3 stride 1, 30x30 out: Winograd's shape
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.small = nn.Conv2d(8, 8, 3, padding=1)  # 3x3 stride 1, 15x15 out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.pointwise(self.dilated(self.big(x))))
        return self.small(self.strided(y)).mean(dim=(2, 3))


def conv_kinds() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """One conv of each kind the cpu target tells apart for Winograd."""
    torch.manual_seed(0)
    return _ConvKinds().eval(), (torch.randn(1, 4, 30, 30),)


class _DepthwiseKinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # with a bias
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.wide = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.tall = nn.Conv2d(8, 8, (3, 1), padding=(1, 0), groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.strided(torch.relu(self.plain(x))))
        return self.tall(self.wide(self.dilated(y)))


def depthwise_kinds() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Depthwise convs of each geometry the cpu target rewrites as taps."""
    torch.manual_seed(0)
    return _DepthwiseKinds().eval(), (torch.randn(1, 8, 17, 17),)


class _SequenceFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 8)  # (time, batch, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def sequence_first() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A GRU over (time, batch, features): dimension 0 is time, not the batch."""
    torch.manual_seed(0)
    return _SequenceFirst().eval(), (torch.randn(5, 1, 4),)


def pointwise_stack() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """24 1x1 convs 16 -> 16 at 56x56: 19 M MACs in contractions of 0.8 M each, no weight read twice."""
    torch.manual_seed(0)
    layers = [m for _ in range(24) for m in (nn.Conv2d(16, 16, 1), nn.ReLU())]
    return nn.Sequential(*layers).eval(), (torch.randn(1, 16, 56, 56),)


class _MatvecKinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Linear(13, 256)  # odd K; 128-output panels
        self.narrow = nn.Linear(256, 48, bias=False)  # 16-output panels
        self.ragged = nn.Linear(48, 40)  # 40 outputs: not a multiple of 16, left a matmul
        self.back = nn.Linear(40, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.narrow(torch.relu(self.wide(x)))) + self.narrow(torch.relu(self.wide(2 * x)))  # each weight read twice
        return self.back(torch.relu(self.ragged(y)))


def matvec_kinds() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """One-row linear layers of the widths the cpu target writes as weight panels, and one it leaves."""
    torch.manual_seed(0)
    return _MatvecKinds().eval(), (torch.randn(1, 13),)


class _MaskedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)
        self.out = nn.Linear(32, 32)
        mask = torch.zeros(16, 16)
        mask[:, 12:] = float("-inf")  # no query sees the last four keys
        mask[-1] = float("-inf")  # nor the last query any key
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.out(y.transpose(1, 2).reshape(1, 16, 32))


def masked_attention() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Two-head attention whose mask hides every key from the last query:
    PyTorch's safe softmax gives that row zeros, where a plain softmax gives NaN."""
    torch.manual_seed(0)
    return _MaskedAttention().eval(), (torch.randn(1, 16, 32),)
