"""GPU only: the skip with torch's fused AdamW kernel and through fpolar.optim's CUDA-graph step."""

import math

import pytest
import torch

import fpolar
import fpolar.optim
from fpolar.adamw_fused import fused_adamw_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def bits(ts):
    return [t.detach().clone() for t in ts]


def same(a, b):
    return all(torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_adamw_found_inf_is_a_bitwise_noop(dtype):
    ps = [torch.randn(s, device="cuda", dtype=dtype) for s in ((7,), (4, 5))]
    hp = fpolar.AdamWHParams(lr=torch.tensor(1e-2, device="cuda"), weight_decay=0.1)
    st = fpolar.init_adamw_state(ps, hp)
    fused_adamw_step(ps, [torch.randn_like(p) for p in ps], st, hp)
    before = bits(ps + st.exp_avg + st.exp_avg_sq + st.step)
    grads = [torch.randn_like(p) for p in ps]
    grads[1][0, 0] = math.nan
    fused_adamw_step(ps, grads, st, hp, found_inf=torch.ones((), device="cuda"))
    assert same(ps + st.exp_avg + st.exp_avg_sq + st.step, before)


def test_optimizer_cuda_graph_step_skips():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).cuda()
    opt = fpolar.optim.PolarGrad(model.parameters(), lr=0.02, compiled="cuda_graph")
    x = torch.randn(16, 32, device="cuda")
    for k in range(6):  # warm-up, capture, replays; step 4 has a NaN grad
        opt.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        if k == 4:
            next(model.parameters()).grad[0, 0] = math.nan
            before = bits(list(model.parameters()))
        opt.step()
        if k == 4:
            assert same(list(model.parameters()), before)
    assert opt.skipped_steps.item() == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
