"""lower: integer inputs that index a table get their valid range from the IR;
lowering a big weight does not copy it over and over."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from optc.errors import InputError
from optc.load import Model
from optc.lower import check_index_ranges, input_index_ranges, lower


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.small = nn.Embedding(7, 4)
        self.table = nn.Parameter(torch.randn(30, 4))

    def forward(self, a, b, x):
        return self.small(a).sum(1) + torch.index_select(self.table, 0, b) + x


def test_ranges_come_from_the_tables_each_input_indexes():
    inputs = (torch.tensor([[1, 2, 6]]), torch.tensor([29]), torch.randn(1, 4))
    program = lower(Model(_Two().eval(), inputs, "two"))
    assert input_index_ranges(program) == {0: (0, 7), 1: (0, 30)}


def test_float_models_have_no_index_ranges():
    from tests.conftest import lowered

    assert input_index_ranges(lowered("mlp")[1]) == {}
    assert input_index_ranges(lowered("transformer")[1]) == {0: (0, 100)}


def test_check_names_the_first_value_out_of_range():
    check_index_ranges([np.array([0, 6])], {0: (0, 7)}, "--input t.npy")
    with pytest.raises(InputError, match=r"--input t.npy: input 0 indexes a table of 7 rows.*found 7 at \[1\]"):
        check_index_ranges([np.array([0, 7, -1])], {0: (0, 7)}, "--input t.npy")


def test_a_failing_lowering_leaves_no_file_in_the_temp_folder(tmp_path, monkeypatch):
    import tempfile

    from optc.errors import LowerError
    from optc.load import load_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(LowerError) as e:
        lower(load_model("tests.e2e.unlowerable_model:model"))
    assert list(tmp_path.iterdir()) == []
    assert tempfile.tempdir == str(tmp_path)
    assert e.value.detail  # what torch-mlir printed, for --verbose


_PEAK_SCRIPT = """
import torch
from torch import nn
from optc.load import Model
from optc.lower import lower

def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) * 1024

model = Model(nn.Linear(4096, 4096, bias=False).eval(), (torch.randn(1, 4096),), "big")
model.export()  # torch.export's own cost is not lowering's
before = hwm()
lower(model)
print(hwm() - before)
"""


def test_lowering_a_big_weight_keeps_few_copies_of_it():
    # 64 MiB of weights. torch-mlir's pipeline runner printed the whole module
    # (weights as hex) for a repro report before lowering: ~4x the weights.
    weights = 4096 * 4096 * 4
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True)
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 1.5 * weights, f"lowering raised peak memory by {growth / weights:.1f}x the weights"
