"""verify: outputs are flattened the way torch.export flattens them."""

import torch

import numpy as np

from optc.verify import eager_outputs, flatten_outputs, with_weights


def test_dict_outputs_flatten_in_insertion_order_like_torch_export():
    from tests.e2e.probe_models import dict_outputs

    model, inputs = dict_outputs()
    out = model(*inputs)
    assert list(out) == ["b", "a"]
    flat = flatten_outputs(out)
    exported = torch.export.export(model, inputs).module()(*inputs)
    leaves = torch.utils._pytree.tree_leaves(exported)
    assert len(flat) == len(leaves) == 2
    for got, want in zip(flat, leaves):
        assert (got == want.detach().numpy()).all()


def test_with_weights_computes_with_the_arrays_themselves_and_copies_no_parameter():
    """The compressed reference reads the reference array in place, and every
    other parameter from the model itself (no deepcopy of a big model)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    new = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    seen = {}

    def record(module, args):
        seen[module] = (module.weight.data_ptr(), module.bias.data_ptr())

    for m in (model[0], model[2]):
        m.register_forward_pre_hook(record)
    before = {n: t.data_ptr() for n, t in model.state_dict(keep_vars=True).items()}
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    got = eager_outputs(with_weights(model, {"0.weight": new}), [x])[0]
    assert seen[model[0]] == (new.ctypes.data, before["0.bias"])
    assert seen[model[2]] == (before["2.weight"], before["2.bias"])
    want = np.maximum(x @ new.T + model[0].bias.detach().numpy(), 0) @ model[2].weight.detach().numpy().T + model[2].bias.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert model[0].weight.data_ptr() == before["0.weight"]  # the model keeps its own weights afterwards
    assert not np.allclose(eager_outputs(model, [x])[0], got)
