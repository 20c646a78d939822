"""Reference-size models for benchmarks (not for tests: they take minutes to
compile on 2 cores). Shapes follow the well-known architectures; weights are
random (no downloads), which does not change latency.

    resnet18     ResNet-18-shaped CNN, 1x3x224x224
    mobilenetv2  MobileNetV2-shaped CNN, 1x3x224x224
    lstm         2-layer LSTM classifier (hidden 512, 32 steps of 128 features)
    bert         BERT-shaped encoder: 4 layers, hidden 256, 4 heads, FFN 1024, sequence 128
    vgg_classifier  VGG-11/16's classifier on 1x512x7x7 features (25088->4096->4096->1000, 472 MiB)
"""

from __future__ import annotations

import torch
from torch import nn

from examples.models import LSTMClassifier, TransformerEncoder


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(self.layers(y).mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def _init_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def resnet18():
    torch.manual_seed(0)
    return _init_bn(ResNet18()), (torch.randn(1, 3, 224, 224),)


def mobilenetv2():
    torch.manual_seed(0)
    return _init_bn(MobileNetV2()), (torch.randn(1, 3, 224, 224),)


def vgg_classifier():
    """VGG's classifier head alone: its 25088x4096 linear is what makes a VGG
    slow to factor (lowrank's compile-time check, benchmarks/compile_cost.py)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000)
    ).eval()
    return model, (torch.randn(1, 512, 7, 7),)


def lstm():
    torch.manual_seed(0)
    return LSTMClassifier(features=128, hidden=512, num_classes=10, layers=2).eval(), (torch.randn(1, 32, 128),)


def bert():
    torch.manual_seed(0)
    model = TransformerEncoder(vocab=1000, dim=256, heads=4, ffn=1024, layers=4, classes=2).eval()
    return model, (torch.randint(0, 1000, (1, 128)),)


# Narrow variants for tests: the same topologies at a fraction of the widths
# (ResNet-18: 8..64 channels; MobileNetV2: a quarter of each stage's channels)
# and 1x3x64x64 inputs, so they lower and compile in well under a minute. (At
# 32x32 the last stage's stride-2 3x3 convs produce 1x1 maps and IREE 3.13's
# llvm-cpu compile of the dense ResNet fails: "inferred input/output operand #1
# has shape's dimension #2 to be 4, but found 3".)
class NarrowResNet18(ResNet18):
    def __init__(self, classes: int = 10, widths: tuple[int, ...] = (8, 16, 32, 64)):
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], widths[0]
        for cout, stride in zip(widths, (1, 2, 2, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)


class NarrowMobileNetV2(MobileNetV2):
    def __init__(self, classes: int = 10, divisor: int = 4):
        nn.Module.__init__(self)
        stem, last = 32 // divisor, 1280 // divisor
        layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6()]
        cin = stem
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c // divisor, s if i == 0 else 1, t))
                cin = c // divisor
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, classes)


def resnet18_narrow():
    torch.manual_seed(0)
    return _init_bn(NarrowResNet18()), (torch.randn(1, 3, 64, 64),)


def mobilenetv2_narrow():
    torch.manual_seed(0)
    return _init_bn(NarrowMobileNetV2()), (torch.randn(1, 3, 64, 64),)
