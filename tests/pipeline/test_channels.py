"""Coupled channels: groups found through linalg indexing maps, and pruning a
group leaves a valid program equal to the original with those channels zeroed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from optc.channels import Role, Why, channel_groups, prune_channels
from optc.load import Model, load_model
from optc.lower import lower
from optc.targets.cpu import CpuOptions, CpuTarget
from optc.verify import compare, eager_outputs, with_weights
from tests.conftest import filecheck, lowered


def compiled_outputs(p):
    t = CpuTarget()
    return t.open(t.compile(p, CpuOptions()).vmfb, CpuOptions())(*p.example_inputs)


def group(program, key):
    return next(g for g in channel_groups(program) if g.key == key)


def prune_and_zero(program, removals: dict[str, np.ndarray]):
    """Prune the groups ``key -> channels to remove`` one after another on a clone;
    return it and the original's parameters with those channels zeroed."""
    pruned = program.clone()
    zeroed: dict[str, np.ndarray] = {}
    for key, remove in removals.items():
        g = group(program, key)  # zeroing uses the original's parameter names
        zeroed.update(g.zeroed({**program.params, **zeroed}, remove))
        g = group(pruned, key)
        prune_channels(pruned, g, ~np.isin(np.arange(g.size), remove))
        pruned.verify()
    return pruned, zeroed


def assert_equals_zeroed(model, pruned, zeroed):
    expected = eager_outputs(with_weights(model.module, zeroed), pruned.example_inputs)
    err = compare(compiled_outputs(pruned), expected)
    assert err.max_rel < 1e-5, err


def every_other(program, keys):
    rng = np.random.default_rng(0)
    out = {}
    for g in channel_groups(program):
        if g.key in keys:
            out[g.key] = np.sort(rng.choice(g.size, g.size // 2, replace=False))
    return out


def test_digits_cnn_groups_follow_flatten_into_the_classifier(digits):
    model = load_model(str(digits["cnn"]))
    program = lower(model)
    groups = {g.key: g for g in channel_groups(program)}
    assert list(groups) == ["features.0.weight", "features.2.weight", "features.5.weight", "classifier.1.weight", "classifier.3.weight"]
    last_conv = groups["features.5.weight"]
    assert last_conv.prunable and last_conv.size == 128
    (flatten,) = [u for u in last_conv.uses if u.role is Role.CONSUMER]
    assert (flatten.param, flatten.axis) == ("classifier.1.weight", 1)
    # flatten of 128x2x2: channel c is columns 4c .. 4c+3 of the linear layer
    assert np.array_equal(flatten.channels, np.repeat(np.arange(128), 4))
    assert {u.param for u in last_conv.uses if u.role is Role.CHANNELWISE} == {"features.5.bias"}
    head = groups["classifier.3.weight"]
    assert [b.why for b in head.blocked] == [Why.REACHES_OUTPUT]
    with pytest.raises(ValueError, match="cannot be pruned: the channel reaches the model output"):
        prune_channels(program, head, np.arange(5))

    pruned, zeroed = prune_and_zero(program, every_other(program, set(groups) - {"classifier.3.weight"}))
    stats = pruned.layer_stats()
    assert stats["classifier.1.weight"].params == 128 * 256  # half the rows, half the column ranges
    assert stats["features.5.weight"].params == 64 * 64 * 9
    assert_equals_zeroed(model, pruned, zeroed)


def test_resnet18_residual_adds_couple_their_producers():
    model, program = lowered_reference("resnet18_narrow")
    groups = {g.key: g for g in channel_groups(program)}
    stem = groups["conv1.weight"]
    # the stem and both conv2s of stage 1 feed the same residual stream
    assert stem.producers == ["conv1.weight", "layers.0.conv2.weight", "layers.1.conv2.weight"]
    assert set(stem.consumers) == {"layers.0.conv1.weight", "layers.1.conv1.weight", "layers.2.conv1.weight", "layers.2.down.0.weight"}
    assert {"bn1.running_mean", "bn1.running_var", "bn1.weight", "bn1.bias", "layers.0.bn2.bias"} <= {u.param for u in stem.uses}
    assert groups["layers.2.conv2.weight"].producers == ["layers.2.conv2.weight", "layers.2.down.0.weight", "layers.3.conv2.weight"]
    assert [g.key for g in groups.values() if not g.prunable] == ["fc.weight"]

    pruned, zeroed = prune_and_zero(program, every_other(program, {k for k, g in groups.items() if g.prunable}))
    assert pruned.total_params() < 0.5 * program.total_params()
    assert_equals_zeroed(model, pruned, zeroed)


def test_mobilenetv2_depthwise_channels_join_their_producer():
    model, program = lowered_reference("mobilenetv2_narrow")
    groups = {g.key: g for g in channel_groups(program)}
    expand = groups["features.5.block.0.weight"]  # 1x1 expand -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> 1x1 project
    assert expand.producers == ["features.5.block.0.weight"]
    assert {(u.param, u.role) for u in expand.uses} >= {
        ("features.5.block.3.weight", Role.CHANNELWISE),  # the depthwise filter
        ("features.5.block.4.running_var", Role.CHANNELWISE),
        ("features.5.block.6.weight", Role.CONSUMER),
    }
    stage = groups["features.6.block.6.weight"]  # three blocks' projections through two residual adds
    assert stage.producers == ["features.6.block.6.weight", "features.7.block.6.weight", "features.8.block.6.weight"]
    keys = {"features.0.weight", "features.5.block.0.weight", "features.6.block.6.weight", "features.20.weight"}
    pruned, zeroed = prune_and_zero(program, every_other(program, keys))
    assert_equals_zeroed(model, pruned, zeroed)


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        y = self.bn(torch.cat([self.a(x), torch.relu(self.b(x))], 1))
        return self.fc(torch.flatten(torch.relu(self.c(y)), 1))


def small(module, shape):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    model = Model(module.eval(), (torch.randn(*shape),), type(module).__name__)
    return model, lower(model)


def test_concat_halves_map_to_their_offsets():
    model, program = small(ConcatNet(), (1, 3, 4, 4))
    groups = {g.key: g for g in channel_groups(program)}
    a, b = groups["a.weight"], groups["b.weight"]
    assert (a.size, b.size) == (4, 6) and a.prunable and b.prunable
    bn_a = next(u for u in a.uses if u.param == "bn.running_mean")
    assert np.array_equal(bn_a.channels, [0, 1, 2, 3, -1, -1, -1, -1, -1, -1])
    cons_b = next(u for u in b.uses if u.role is Role.CONSUMER)
    assert (cons_b.param, cons_b.axis) == ("c.weight", 1)
    assert np.array_equal(cons_b.channels, [-1] * 4 + list(range(6)))
    pruned, zeroed = prune_and_zero(program, {"a.weight": np.array([1, 2]), "b.weight": np.array([0, 5]), "c.weight": np.array([3])})
    assert pruned.params[next(p for p in pruned.params if pruned.layer_of(p) == "c.weight")].shape == (4, 6, 3, 3)
    assert_equals_zeroed(model, pruned, zeroed)


def test_grouped_conv_and_output_are_typed_reasons():
    _, program = lowered("cnn")
    groups = {g.key: g for g in channel_groups(program)}
    assert [b.why for b in groups["stem.weight"].blocked] == [Why.RESHAPED]  # split into the grouped conv's groups
    assert "tensor.expand_shape" in str(groups["stem.weight"].blocked[0])
    assert [b.why for b in groups["fc2.weight"].blocked] == [Why.REACHES_OUTPUT]
    fc1 = groups["fc1.weight"]
    with pytest.raises(ValueError, match="removes every channel"):
        prune_channels(program, fc1, np.zeros(fc1.size, dtype=bool))
    with pytest.raises(ValueError, match="has 64 channels"):
        prune_channels(program, fc1, np.ones(3, dtype=bool))
    prune_channels(program, fc1, np.arange(10))
    with pytest.raises(ValueError, match="another program"):
        prune_channels(program.clone(), group(program, "fc1.weight"), np.arange(5))
    with pytest.raises(ValueError, match="recompute"):
        prune_channels(program, fc1, np.arange(5))  # computed before the rewrite


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 2, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


CHECKS = """
// CHECK-DAG: dense_resource<{{fc.weight[_0-9]*}}> : tensor<4x12xf32>
// CHECK-DAG: dense_resource<{{conv.weight[_0-9]*}}> : tensor<3x3x3x3xf32>
// CHECK-DAG: dense_resource<{{bn.running_var[_0-9]*}}> : tensor<3xf32>
// CHECK: linalg.conv_2d_nchw_fchw {{.*}} -> tensor<1x3x2x2xf32>
// CHECK: linalg.generic {{.*}} ins({{.*}} : tensor<1x3x2x2xf32>, tensor<3x1x1xf32>) outs({{.*}} : tensor<1x3x2x2xf32>)
// CHECK: tensor.collapse_shape {{.*}} into tensor<1x12xf32>
// CHECK: linalg.matmul ins({{.*}} : tensor<1x12xf32>, tensor<12x4xf32>)
"""


def test_pruned_shapesfilecheck(tmp_path):
    _, program = small(TinyNet(), (1, 3, 2, 2))
    prune_channels(program, group(program, "conv.weight"), np.array([0, 2, 5]))
    filecheck(tmp_path, CHECKS, program.to_text())


_REFERENCE: dict = {}


def lowered_reference(name):
    if name not in _REFERENCE:
        model = load_model(f"examples.reference_models:{name}")
        _REFERENCE[name] = (model, lower(model))
    model, program = _REFERENCE[name]
    return model, program.clone()


def test_lstm_hidden_units_couple_gates_and_steps():
    model, program = lowered("lstm")
    groups = {g.key: g for g in channel_groups(program)}
    layer0 = groups["lstm.weight_ih_l0"]
    # a hidden unit is 4 gate rows of both weights, read by every step and the next layer
    assert layer0.producers == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"] and layer0.size == 64
    rows = next(u for u in layer0.uses if u.param == "lstm.weight_ih_l0" and u.role is Role.PRODUCER)
    assert np.array_equal(rows.channels, np.tile(np.arange(64), 4))
    assert set(layer0.consumers) == {"lstm.weight_hh_l0", "lstm.weight_ih_l1"}
    pruned, zeroed = prune_and_zero(program, {"lstm.weight_ih_l0": np.arange(0, 64, 3), "lstm.weight_ih_l1": np.arange(5, 40)})
    assert_equals_zeroed(model, pruned, zeroed)
