"""``fpolar.inductor_options``: the mode's own options, plus loop reordering off where it asserts."""

import pytest
import torch

from fpolar.inductor_options import LOOP_REORDER_ASSERTS, _version, inductor_options


def test_mode_options_are_folded_in():
    for mode in (None, "default", "reduce-overhead", "max-autotune"):
        want = dict(torch._inductor.list_mode_options()[mode or "default"])
        got = inductor_options(mode)
        assert {k: v for k, v in got.items() if k != "loop_ordering_after_fusion"} == want
        assert ("loop_ordering_after_fusion" in got) == LOOP_REORDER_ASSERTS
        if LOOP_REORDER_ASSERTS:
            assert got["loop_ordering_after_fusion"] is False
            assert hasattr(torch._inductor.config, "loop_ordering_after_fusion")  # a real option name


def test_affected_versions():
    assert _version("2.11.0+cu130") == (2, 11) and _version("2.13.0") == (2, 13)
    assert LOOP_REORDER_ASSERTS == (_version(torch.__version__) < (2, 13))


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="'fast'"):
        inductor_options("fast")
