"""The example third-party plugin's own tests (examples/optc_fp16_plugin), run in this suite."""

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "examples" / "optc_fp16_plugin"))

from test_optc_fp16 import test_fp16_keeps_the_method_contract, test_weights_are_stored_as_float16_and_small_ones_are_skipped  # noqa: E402, F401
