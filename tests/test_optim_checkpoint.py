"""fpolar.optim checkpoints: bit-exact resume (with AdamW state and an LR scheduler), weights_only
loading, refusal of checkpoints that do not fit (optimizer left unchanged), dtype following."""

import copy
import io

import pytest
import torch
from torch import nn

import fpolar.optim as fo
from fpolar.optim import Muon, PolarGrad


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: intra-op threads only add contention (10-30x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Net(nn.Module):
    """Matrices of several shapes (two sharing one), a 3-D stack, a conv, vectors, an embedding."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.up = nn.Linear(6, 12)
        self.mid = nn.Linear(12, 12)
        self.down = nn.Linear(12, 6)
        self.stack = nn.Parameter(torch.randn(2, 6, 6) / 3)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 11)
        self.to(dtype)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.conv(x.mT).mT
        x = x + self.down(torch.tanh(self.mid(torch.tanh(self.up(x)))))
        x = x + torch.einsum("btd,kde->bte", x, self.stack) / 2
        return self.head(self.norm(x))


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 11, (3, 5), generator=g), torch.randint(0, 11, (3, 5), generator=g)) for _ in range(n)]


def train(model, opt, sched, data):
    for idx, target in data:
        opt.zero_grad()
        logits = model(idx)
        nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten()).backward()
        opt.step()
        if sched is not None:
            sched.step()


def make_muon(model):
    return Muon(fo.param_groups(model, adamw={"lr": 3e-3, "betas": (0.9, 0.95)}), lr=0.02, adamw_lr=1e-3)


def make_polargrad(model):
    return PolarGrad(model.parameters(), lr=2e-3, nesterov=True, weight_decay=0.01, adamw_lr=2e-3)


def save(*objs):
    buf = io.BytesIO()
    torch.save([o.state_dict() for o in objs], buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("make_opt", [make_muon, make_polargrad], ids=["muon", "polargrad"])
def test_resume_is_bit_exact_with_adamw_state_and_scheduler(make_opt):
    torch.manual_seed(0)
    model = Net()
    resumed_model = copy.deepcopy(model)
    first, second = batches(4, 1), batches(5, 2)

    def schedule(o):
        return torch.optim.lr_scheduler.LambdaLR(o, lambda k: 0.9**k)

    opt = make_opt(model)
    sched = schedule(opt)
    train(model, opt, sched, first)
    train(resumed_model, opt2 := make_opt(resumed_model), sched2 := schedule(opt2), first)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))
    buf = save(resumed_model, opt2, sched2)

    # fresh objects, as in a new process
    fresh_model = Net()
    fresh_opt = make_opt(fresh_model)
    fresh_sched = schedule(fresh_opt)
    model_sd, opt_sd, sched_sd = torch.load(buf, weights_only=True)
    fresh_model.load_state_dict(model_sd)
    fresh_opt.load_state_dict(opt_sd)
    fresh_sched.load_state_dict(sched_sd)
    assert {g["algorithm"] for g in fresh_opt.param_groups} == {"polargrad", "adamw"}
    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in opt.param_groups]

    train(model, opt, sched, second)
    train(fresh_model, fresh_opt, fresh_sched, second)
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        for k, v in opt.state[p].items():
            assert torch.equal(v, fresh_opt.state[q][k]), k


def test_state_dict_layout_is_torch_optim_and_weights_only_loadable():
    model = Net()
    opt = make_muon(model)
    train(model, opt, None, batches(2, 3))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    flat = [i for g in sd["param_groups"] for i in g["params"]]
    assert flat == list(range(len(flat))) and sorted(sd["state"]) == flat
    for g in sd["param_groups"]:
        keys = {"momentum_buffer", "step"} if g["algorithm"] == "polargrad" else {"step", "exp_avg", "exp_avg_sq"}
        for i in g["params"]:
            assert set(sd["state"][i]) == keys
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["param_groups"] == sd["param_groups"]
    # like torch.optim, state_dict() hands out the live tensors; a deepcopy is a snapshot
    snapshot = copy.deepcopy(sd)
    train(model, opt, None, batches(1, 4))
    w = model.up.weight
    i = next(k for g in sd["param_groups"] for k, p in zip(g["params"], opt_params(opt, g)) if p is w)
    assert torch.equal(sd["state"][i]["momentum_buffer"], opt.state[w]["momentum_buffer"])
    assert not torch.equal(snapshot["state"][i]["momentum_buffer"], opt.state[w]["momentum_buffer"])


def opt_params(opt, packed_group):
    """The live params of the group whose packed form is ``packed_group``."""
    start = packed_group["params"][0]
    flat = [p for g in opt.param_groups for p in g["params"]]
    return flat[start : start + len(packed_group["params"])]


# --------------------------------------------------------------------------- refused checkpoints


def _snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()},
        copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
        {id(p): {k: v.data_ptr() for k, v in s.items()} for p, s in opt.state.items()},
    )


def _assert_unchanged(model, opt, snap):
    params, state, groups, ptrs = snap
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), params))
    assert set(state) == {id(p) for p in opt.state}
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, state[id(p)][k]) and v.data_ptr() == ptrs[id(p)][k]
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups


def _stepped_checkpoint(model_fn=Net, make_opt=make_muon, seed=5):
    torch.manual_seed(seed)
    m = model_fn()
    o = make_opt(m)
    train(m, o, None, batches(2, seed))
    return copy.deepcopy(o.state_dict())


def _polar_ids(sd):
    return next(g["params"] for g in sd["param_groups"] if g["algorithm"] == "polargrad")


def _adamw_ids(sd):
    return next(g["params"] for g in sd["param_groups"] if g["algorithm"] == "adamw")


def _wrong_count(sd):
    sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]


def _wrong_shape(sd):
    i = _polar_ids(sd)[0]
    sd["state"][i]["momentum_buffer"] = torch.zeros(3, 3)


def _other_algorithm(sd):
    sd["param_groups"][0]["algorithm"] = "adamw"


def _missing_state_key(sd):
    del sd["state"][_adamw_ids(sd)[0]]["exp_avg_sq"]


def _missing_momentum(sd):
    del sd["state"][_polar_ids(sd)[1]]["momentum_buffer"]


def _missing_group_key(sd):
    del sd["param_groups"][0]["nesterov"]


def _partial_state(sd):
    del sd["state"][_polar_ids(sd)[0]]


def _extra_group(sd):
    sd["param_groups"].append(copy.deepcopy(sd["param_groups"][-1]))


def _not_fpolar(sd):
    for g in sd["param_groups"]:
        del g["algorithm"]


def _bad_hparam(sd):
    sd["param_groups"][0]["lr"] = -1.0


def _unknown_state_id(sd):
    sd["state"][999] = sd["state"][_adamw_ids(sd)[0]]


def _steps_disagree(sd):
    ids = _polar_ids(sd)
    sd["state"][ids[0]]["step"] = torch.tensor(7.0)


BAD = {
    "wrong param count": (_wrong_count, r"has \d+ params but this optimizer's group 0 has \d+"),
    "wrong shape": (_wrong_shape, r"'momentum_buffer' has shape \(3, 3\), expected"),
    "other algorithm": (_other_algorithm, r"runs algorithm 'adamw' but this optimizer's group 0 runs 'polargrad'"),
    "missing state key": (_missing_state_key, r"lacks \['exp_avg_sq'\]"),
    "missing momentum": (_missing_momentum, r"lacks \['momentum_buffer'\]"),
    "missing group key": (_missing_group_key, r"lacks the keys \['nesterov'\]"),
    "partial state": (_partial_state, r"state is missing for params at positions \[0\]"),
    "group count": (_extra_group, r"has 3 param groups but this optimizer has 2"),
    "not fpolar": (_not_fpolar, r"no 'algorithm' key"),
    "bad hparam": (_bad_hparam, r"lr must be ≥ 0"),
    "unknown state id": (_unknown_state_id, r"param ids \[999\]"),
    "steps disagree": (_steps_disagree, r"different step counts"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("stepped", [True, False], ids=["stepped", "fresh"])
def test_bad_checkpoint_is_refused_and_changes_nothing(case, stepped):
    corrupt, match = BAD[case]
    sd = _stepped_checkpoint()
    corrupt(sd)
    torch.manual_seed(6)
    model = Net()
    opt = make_muon(model)
    if stepped:
        train(model, opt, None, batches(1, 7))
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    _assert_unchanged(model, opt, snap)


def test_checkpoint_of_the_other_class_or_torch_muon_is_refused():
    torch.manual_seed(8)
    model = Net()
    pg_sd = _stepped_checkpoint(make_opt=make_polargrad)
    opt = make_muon(model)
    with pytest.raises(ValueError):
        opt.load_state_dict(pg_sd)  # same group count, but PolarGrad's keys ("scale", …) are not Muon's
    mats = [p for p in model.parameters() if p.dim() == 2]
    tm = torch.optim.Muon(mats, lr=0.02)
    for p in mats:
        p.grad = torch.randn_like(p)
    tm.step()
    # PolarGrad refuses a torch.optim.Muon checkpoint, naming where it loads; Muon takes it over
    # (tests/test_torch_migration.py checks the numbers).
    ours = PolarGrad(mats, lr=0.02)
    with pytest.raises(ValueError, match="not saved by fpolar.optim.*loads into fpolar.optim.Muon"):
        ours.load_state_dict(tm.state_dict())
    assert len(ours.state) == 0
    muon = Muon(mats, lr=0.05)
    muon.load_state_dict(tm.state_dict())
    assert muon.param_groups[0]["lr"] == 0.02 and len(muon.state) == len(mats)


# --------------------------------------------------------------------------- dtype, views, resets


@pytest.mark.parametrize("src, dst", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_float_state_follows_the_param_dtype_on_load(src, dst):
    sd = _stepped_checkpoint(lambda: Net(src))
    model = Net(dst)
    opt = make_muon(model)
    opt.load_state_dict(sd)
    for p, s in opt.state.items():
        assert s["step"].dtype == torch.float32
        for k in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if k in s:
                assert s[k].dtype == dst == p.dtype and s[k].device == p.device
    # values survive the cast as well as the dtype allows
    ref = {i: s for i, s in sd["state"].items()}
    mine = opt.state_dict()["state"]
    for i, s in mine.items():
        for k, v in s.items():
            torch.testing.assert_close(v.float(), ref[i][k].to(dst).float())
    train(model, opt, None, batches(1, 9))  # and the loaded optimizer steps


def test_momentum_dtype_is_kept_on_load():
    sd = _stepped_checkpoint(lambda: Net(torch.bfloat16))
    model = Net(torch.bfloat16)
    opt = Muon(fo.param_groups(model, adamw={"lr": 3e-3, "betas": (0.9, 0.95)}), lr=0.02, adamw_lr=1e-3,
               momentum_dtype=torch.float32)
    sd["param_groups"][0]["momentum_dtype"] = torch.float32  # a checkpoint of such an optimizer
    opt.load_state_dict(sd)
    polar = opt.param_groups[0]["params"]
    assert all(opt.state[p]["momentum_buffer"].dtype == torch.float32 for p in polar)


def test_load_copies_into_live_buffers_so_views_stay_valid():
    sd = _stepped_checkpoint()
    torch.manual_seed(10)
    model = Net()
    opt = make_muon(model)
    train(model, opt, None, batches(1, 11))
    w = model.mid.weight
    view = opt.state[w]["momentum_buffer"]
    ptr = view.data_ptr()
    opt.load_state_dict(sd)
    assert opt.state[w]["momentum_buffer"] is view and view.data_ptr() == ptr
    i = next(k for k, p in enumerate(p for g in opt.param_groups for p in g["params"]) if p is w)
    assert torch.equal(view, sd["state"][i]["momentum_buffer"])
    before = view.clone()
    train(model, opt, None, batches(1, 12))
    assert not torch.equal(view, before)  # the step writes through the same view


def test_loading_a_checkpoint_without_state_resets_the_optimizer():
    torch.manual_seed(13)
    model = Net()
    twin = copy.deepcopy(model)
    opt, ref = make_muon(model), make_muon(twin)
    empty = copy.deepcopy(opt.state_dict())  # before any step
    assert empty["state"] == {}
    train(model, opt, None, batches(2, 14))
    model.load_state_dict(twin.state_dict())
    opt.load_state_dict(empty)
    assert len(opt.state) == 0
    data = batches(2, 15)
    train(model, opt, None, data)
    train(twin, ref, None, data)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_deepcopy_of_the_optimizer_continues_identically():
    torch.manual_seed(16)
    model = Net()
    opt = make_polargrad(model)
    train(model, opt, None, batches(2, 17))
    model2 = copy.deepcopy(model)
    opt2 = copy.deepcopy(opt)
    # re-point the copy at model2's params (deepcopy of an optimizer copies its params too)
    opt2.load_state_dict(opt.state_dict())
    opt3 = make_polargrad(model2)
    opt3.load_state_dict(opt2.state_dict())
    data = batches(2, 18)
    train(model, opt, None, data)
    train(model2, opt3, None, data)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    # the deep copy itself holds working functional state
    assert all(opt2.state[p]["step"].item() == 2 for p in opt2.param_groups[0]["params"])
    assert opt2._runtime[0].state.momentum[0] is opt2.state[opt2.param_groups[0]["params"][0]]["momentum_buffer"]


def test_empty_state_left_by_reading_opt_state_does_not_break_a_round_trip():
    torch.manual_seed(19)
    model = Net()
    opt = make_muon(model)
    late = nn.Parameter(torch.randn(4, 4))
    opt.add_param_group({"params": [late]})
    train(model, opt, None, batches(1, 20))
    assert opt.state[late] == {}  # torch.optim's defaultdict: reading creates an empty entry
    buf = save(opt)
    fresh = make_muon(Net())
    fresh.add_param_group({"params": [nn.Parameter(torch.randn(4, 4))]})
    fresh.load_state_dict(torch.load(buf, weights_only=True)[0])
    assert fresh._runtime[-1].state is None and len(fresh.state) == len(list(model.parameters()))
