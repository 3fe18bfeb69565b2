"""The auto-dispatch rules and their visibility through describe_plan."""

import pytest
import torch

import fpolar
from fpolar.polar.dispatch import GRAM_MIN_ASPECT, TRITON_MIN_SIDE, choose_ns_ops, ns_implementation
from fpolar.polar.newton_schulz import TORCH_OPS

BF16 = torch.bfloat16


@pytest.mark.parametrize(
    "m, n, cuda, dtype, kernels, norm, expected",
    [
        (768, 3072, True, BF16, "auto", "frobenius", "gram"),
        (768, 768, True, BF16, "auto", "frobenius", "torch"),
        (4096, 4096, True, BF16, "auto", "frobenius", "triton"),
        (4096, 4096, True, torch.float32, "auto", "frobenius", "torch"),
        (768, 3072, True, BF16, "auto", "aol", "torch"),  # AOL start has no Gram-space form here
        (768, 3072, False, BF16, "auto", "frobenius", "torch"),  # CPU: always torch
        (768, 3072, True, BF16, "torch", "frobenius", "torch"),
        (10, 10, True, BF16, "triton", "frobenius", "triton"),
    ],
)
def test_ns_implementation(m, n, cuda, dtype, kernels, norm, expected):
    assert ns_implementation(m, n, cuda, dtype, kernels, norm) == expected


def test_thresholds_are_what_the_docs_say():
    assert GRAM_MIN_ASPECT == 2.0 and TRITON_MIN_SIDE == 4096


def test_triton_on_cpu_is_refused_clearly():
    with pytest.raises(ValueError, match="kernels='triton' needs CUDA tensors, got a tensor on cpu"):
        choose_ns_ops(torch.randn(1, 4, 8), "triton", torch.float32)
    assert choose_ns_ops(torch.randn(1, 4, 8), "auto", torch.float32) is TORCH_OPS


def test_describe_plan_lists_groups():
    params = [torch.randn(30, 10), torch.randn(30, 10), torch.randn(2, 4, 4), torch.randn(6, 2, 3, 3)]
    hp = fpolar.PolarGradHParams(lr=0.1)
    rows = fpolar.describe_plan(fpolar.init_state(params, hp), hp)
    assert [r["batch"] for r in rows] == [(2, 10, 30), (2, 4, 4), (1, 6, 18)]
    assert [r["transposed"] for r in rows] == [True, False, False]
    assert all(r["implementation"] == "newton_schulz [torch matmul]" for r in rows)
    hp_q = fpolar.PolarGradHParams(lr=0.1, polar="qdwh")
    assert fpolar.describe_plan(fpolar.init_state(params, hp_q), hp_q)[0]["implementation"] == "qdwh"
