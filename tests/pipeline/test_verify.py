"""verify: outputs are flattened the way torch.export flattens them."""

import torch

from optc.verify import flatten_outputs


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
