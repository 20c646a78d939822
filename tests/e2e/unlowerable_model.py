"""A model with an op torch-mlir cannot lower: a custom op (with CPU and fake
implementations, so torch.export keeps it as an opaque call)."""

import torch


@torch.library.custom_op("optc_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * 2


@mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Mystery(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mystery(self.fc(x))


def model():
    return Mystery().eval(), (torch.randn(2, 4),)
