"""fpolar.optim.PolarGrad / Muon: parity with torch.optim.Muon and with the functional steps, routing,
torch.optim behaviours (schedulers, compile, closures, hooks, groups) and bad input."""

import copy
import inspect

import pytest
import torch
import torch.optim._muon as torch_muon
from torch import nn
from torch._dynamo.utils import counters

import fpolar
import fpolar.optim as fo
from fpolar.apps.torch_muon_fp32 import newton_schulz_fp32
from fpolar.optim import Muon, PolarGrad, param_groups

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: intra-op threads only add contention (10-30x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# tall, wide, square, two of one shape (one batched polar call), a 1×n row
MATRIX_SHAPES = [(12, 7), (7, 12), (9, 9), (12, 7), (1, 11)]
# plus what the core treats as matrices beyond 2-D: a 3-D stack and a 4-D conv weight
CORE_SHAPES = MATRIX_SHAPES + [(3, 5, 6), (8, 3, 3, 3)]


def leaf_params(shapes, dtype=torch.float32, gen=None):
    return [torch.randn(s, dtype=dtype, generator=gen).requires_grad_() for s in shapes]


def clones(params):
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(param_lists, grads):
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()


def displacement_error(ours, theirs, start):
    """max over params of ‖ours − theirs‖ / ‖theirs − start‖: the disagreement relative to how far
    the params moved, so it does not depend on the lr."""
    return max(((a - b).norm() / (b - p0).norm()).item() for a, b, p0 in zip(ours, theirs, start))


# --------------------------------------------------------------------------- torch.optim.Muon parity


def _run_pair(ours_kwargs, theirs_kwargs, steps=5, shapes=MATRIX_SHAPES):
    start = [torch.randn(s) for s in shapes]
    ours, theirs = clones(start), clones(start)
    opt = Muon(ours, **ours_kwargs)
    ref = torch.optim.Muon(theirs, **theirs_kwargs)
    for _ in range(steps):
        set_grads([ours, theirs], [torch.randn(s) for s in shapes])
        opt.step()
        ref.step()
    return ours, theirs, start


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
def test_muon_matches_torch_muon(monkeypatch, nesterov, adjust_lr_fn):
    # With torch's NS run in float32, the only differences left are rounding: ‖X‖+eps vs max(‖X‖, eps),
    # batched vs single matmuls, and the order of the final multiply-add.
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", newton_schulz_fp32)
    kw = dict(lr=0.03, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ours, theirs, start = _run_pair(kw, kw)
    assert displacement_error(ours, theirs, start) < 1e-4


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_unpatched_torch_muon_within_bf16_rounding(nesterov):
    # torch runs NS in bf16 (8 mantissa bits); ours in bf16 too here. The momenta agree exactly (fp32),
    # so the gap is bf16 rounding of the polar factor: ~1% of the step.
    kw = dict(lr=0.02, nesterov=nesterov, ns_steps=5)
    ours, theirs, start = _run_pair({**kw, "polar_dtype": torch.bfloat16}, kw)
    assert displacement_error(ours, theirs, start) < 4e-2


def test_muon_signature_covers_torch_muon_with_same_defaults():
    ours = inspect.signature(Muon).parameters
    for name, p in inspect.signature(torch.optim.Muon).parameters.items():
        assert name in ours, name
        if p.default is not inspect.Parameter.empty:
            assert ours[name].default == p.default, name
    assert list(ours)[: len(inspect.signature(torch.optim.Muon).parameters)] == list(
        inspect.signature(torch.optim.Muon).parameters
    )  # positional order too


def test_polargrad_defaults_are_the_hparams_defaults():
    sig = inspect.signature(PolarGrad).parameters
    hp = fpolar.PolarGradHParams(lr=1.0)
    for key in fo.polargrad.POLARGRAD_KEYS:
        if key == "lr":
            assert sig[key].default is inspect.Parameter.empty  # required
            continue
        assert sig[key].default == getattr(hp, key), key


# --------------------------------------------------------------------------- functional parity


def _functional_reference(mats, others, grads_seq, hp, ahp):
    """The documented functional recipe, by hand."""
    state = fpolar.init_state(mats, hp)
    astate = fpolar.init_adamw_state(others, ahp)
    for gm, go in grads_seq:
        fpolar.polargrad_step(mats, gm, state, hp)
        fpolar.adamw_step(others, go, astate, ahp)
    return state, astate


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(nesterov=True, weight_decay=0.05),
        dict(order="polar_first", scale="spectral", coefficients="quintic", weight_decay=0.1,
             weight_decay_mode="independent"),
    ],
)
def test_polargrad_class_equals_functional_bitwise(dtype, options):
    lr, wd = 3e-3, options.get("weight_decay", 0.0)
    mats = leaf_params(CORE_SHAPES, dtype)
    others = leaf_params([(7,), (12,), ()], dtype)
    ours_m, ours_o = clones(mats), clones(others)
    # one mixed group: the class must split it into a polar group and an AdamW group itself
    opt = PolarGrad(ours_m + ours_o, lr=lr, adamw_lr=2e-3, adamw_weight_decay=0.01, **options)
    assert [g["algorithm"] for g in opt.param_groups] == ["polargrad", "adamw"]

    hp = fpolar.PolarGradHParams(lr=torch.tensor(lr), **{**options, "weight_decay": torch.tensor(float(wd))})
    ahp = fpolar.AdamWHParams(lr=torch.tensor(2e-3), weight_decay=torch.tensor(0.01))
    grads_seq = []
    for _ in range(4):
        gm = [torch.randn(p.shape, dtype=dtype) for p in mats]
        go = [torch.randn(p.shape, dtype=dtype) for p in others]
        grads_seq.append((gm, go))
        set_grads([ours_m + ours_o], gm + go)
        opt.step()
    with torch.no_grad():
        state, astate = _functional_reference(mats, others, grads_seq, hp, ahp)
    for a, b in zip(ours_m + ours_o, mats + others):
        assert a.dtype == dtype and torch.equal(a, b)
    for p, m in zip(ours_m, state.momentum):
        assert torch.equal(opt.state[p]["momentum_buffer"], m)
    for j, p in enumerate(ours_o):
        assert torch.equal(opt.state[p]["exp_avg_sq"], astate.exp_avg_sq[j])
        assert opt.state[p]["step"].item() == 4


def test_explicit_adamw_group_equals_functional_adamw_bitwise():
    emb, w, b = leaf_params([(20, 6), (6, 6), (6,)])
    ref = clones([emb, w, b])
    opt = Muon(
        [
            {"params": [w, b], "lr": 0.02},
            {"params": [emb], "algorithm": "adamw", "lr": 3e-4, "betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.0},
        ],
        adamw_lr=1e-3,
        adamw_betas=(0.9, 0.98),
    )
    # mixed group → [polar w], [adamw b]; the explicit group stays one AdamW group
    assert [(g["algorithm"], len(g["params"])) for g in opt.param_groups] == [("polargrad", 1), ("adamw", 1), ("adamw", 1)]
    assert opt.param_groups[1]["lr"] == 1e-3 and opt.param_groups[1]["betas"] == (0.9, 0.98)
    assert opt.param_groups[1]["weight_decay"] == 0.1  # None = the polar group's weight_decay
    ahp_b = fpolar.AdamWHParams(lr=torch.tensor(1e-3), betas=(0.9, 0.98), weight_decay=torch.tensor(0.1))
    ahp_e = fpolar.AdamWHParams(lr=torch.tensor(3e-4), betas=(0.8, 0.95), eps=1e-10, weight_decay=torch.tensor(0.0))
    st_b, st_e = fpolar.init_adamw_state([ref[2]], ahp_b), fpolar.init_adamw_state([ref[0]], ahp_e)
    for _ in range(3):
        g = [torch.randn(p.shape) for p in (emb, w, b)]
        set_grads([[emb, w, b]], g)
        opt.step()
        with torch.no_grad():
            fpolar.adamw_step([ref[2]], [g[2]], st_b, ahp_b)
            fpolar.adamw_step([ref[0]], [g[0]], st_e, ahp_e)
    assert torch.equal(b, ref[2]) and torch.equal(emb, ref[0])


# --------------------------------------------------------------------------- param_groups helper


class TinyLM(nn.Module):
    def __init__(self, tie=True):
        super().__init__()
        self.tok = nn.Embedding(30, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.experts = nn.Parameter(torch.randn(2, 8, 8))
        self.lm_head = nn.Linear(8, 30, bias=False)
        self.classifier = nn.Linear(8, 3)
        if tie:
            self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx)
        x = x + self.conv(x.mT).mT
        x = x + self.mlp(self.norm(x)) + torch.einsum("btd,edf->btf", x, self.experts) / 4
        return self.lm_head(x).sum() + self.classifier(x).sum()


def _ids(ts):
    return {id(t) for t in ts}


@pytest.mark.parametrize("tie", [True, False])
def test_param_groups_routing_rules(tie):
    m = TinyLM(tie)
    vectors = [m.conv.bias, m.norm.weight, m.norm.bias, m.mlp[0].bias, m.mlp[2].bias, m.classifier.bias]
    hidden = [m.conv.weight, m.mlp[0].weight, m.mlp[2].weight, m.experts]
    heads = [m.lm_head.weight, m.classifier.weight]
    embeds = [m.tok.weight]

    groups = param_groups(m, adamw={"lr": 3e-4})
    assert [g["algorithm"] for g in groups] == ["polargrad", "adamw"] and groups[1]["lr"] == 3e-4
    assert _ids(groups[0]["params"]) == _ids(hidden)
    assert _ids(groups[1]["params"]) == _ids(vectors + heads + embeds)

    only_embed = param_groups(m, adamw_for=("embedding",))
    tied_head = [m.tok.weight] if tie else []
    assert _ids(only_embed[1]["params"]) == _ids(vectors + embeds + tied_head)
    nothing = param_groups(m, adamw_for=())
    assert _ids(nothing[1]["params"]) == _ids(vectors)
    assert _ids(nothing[0]["params"]) == _ids(hidden + heads + embeds)
    # every parameter exactly once
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in m.parameters())

    named = param_groups(m, with_names=True)
    opt = Muon(named, lr=0.02)
    assert "tok.weight" in opt.param_groups[1]["param_names"]
    with pytest.raises(ValueError, match="adamw_for"):
        param_groups(m, adamw_for=("embeddings",))


def test_param_groups_model_trains_in_one_step_call():
    torch.manual_seed(0)
    m = TinyLM()
    opt = Muon(param_groups(m, adamw={"lr": 1e-2}), lr=0.02)
    before = [p.detach().clone() for p in m.parameters()]
    idx = torch.randint(0, 30, (2, 5))
    m(idx).backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert len(opt.state) == len(list(m.parameters()))


# --------------------------------------------------------------------------- torch.optim behaviours


def test_params_without_grads_are_skipped_and_their_state_untouched():
    ps = leaf_params([(6, 4), (6, 4), (4, 6), (5,)])
    frozen = clones(ps)
    opt = Muon(ps, lr=0.05)
    set_grads([ps], [torch.randn(p.shape) for p in ps])
    opt.step()
    snap = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in ps}
    after1 = [p.detach().clone() for p in ps]
    # second step: only ps[0] has a grad
    set_grads([ps], [torch.randn(6, 4), None, None, None])
    opt.step()
    assert not torch.equal(ps[0], after1[0])
    for p, a in zip(ps[1:], after1[1:]):
        assert torch.equal(p, a)
    for p in ps[1:3]:
        assert torch.equal(opt.state[p]["momentum_buffer"], snap[id(p)]["momentum_buffer"])
    assert torch.equal(opt.state[ps[3]]["exp_avg"], snap[id(ps[3])]["exp_avg"])
    assert opt.state[ps[3]]["step"].item() == 1  # AdamW counts per param
    assert not torch.equal(opt.state[ps[0]]["momentum_buffer"], snap[id(ps[0])]["momentum_buffer"])

    # a group that never had a grad has no state, and its params do not move
    late = leaf_params([(3, 3)])[0]
    late0 = late.detach().clone()
    opt.add_param_group({"params": [late]})
    set_grads([ps], [torch.randn(p.shape) for p in ps])
    opt.step()
    assert late not in opt.state and torch.equal(late, late0)
    assert len(opt.state_dict()["state"]) == len(ps)


def test_closure_runs_with_grad_and_returns_loss():
    torch.manual_seed(1)
    model = nn.Linear(5, 3)
    twin = copy.deepcopy(model)
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    opt, opt2 = Muon(model.parameters(), lr=0.02), Muon(twin.parameters(), lr=0.02)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with torch.no_grad():  # the closure must still get grad mode
        loss = opt.step(closure)
    twin.zero_grad()
    ref_loss = nn.functional.mse_loss(twin(x), y)
    ref_loss.backward()
    opt2.step()
    assert torch.equal(loss.detach(), ref_loss.detach())
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_step_with_grad_mode_on_does_not_record_autograd():
    p = leaf_params([(4, 4)])[0]
    opt = PolarGrad([p], lr=1e-2)
    p.grad = torch.randn(4, 4)
    with torch.enable_grad():
        opt.step()  # in-place update of a leaf that requires grad: fails unless the step runs without grad
    assert p.is_leaf and p.grad_fn is None


def test_zero_grad_then_step_changes_nothing():
    ps = leaf_params([(5, 3), (3,)])
    opt = Muon(ps, lr=0.05)
    set_grads([ps], [torch.randn(p.shape) for p in ps])
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in ps)
    before = [p.detach().clone() for p in ps]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ps, before))
    set_grads([ps], [torch.randn(p.shape) for p in ps])
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ps)


def test_add_param_group_mid_run_matches_a_fresh_optimizer_for_the_new_params():
    old = leaf_params([(6, 5), (5,)])
    new = leaf_params([(4, 6), (6, 6), (4,)])
    new_ref = clones(new)
    opt = Muon(old, lr=0.02)
    set_grads([old], [torch.randn(p.shape) for p in old])
    opt.step()
    opt.add_param_group({"params": new, "lr": 0.01, "adjust_lr_fn": "match_rms_adamw", "adamw_lr": 2e-3})
    assert [g["algorithm"] for g in opt.param_groups] == ["polargrad", "adamw", "polargrad", "adamw"]
    assert opt.param_groups[2]["momentum"] == 0.95  # defaults fill the rest
    ref = Muon(new_ref, lr=0.01, adjust_lr_fn="match_rms_adamw", adamw_lr=2e-3)
    for _ in range(3):
        g = [torch.randn(p.shape) for p in new]
        set_grads([old], [torch.randn(p.shape) for p in old])
        set_grads([new, new_ref], g)
        opt.step()
        ref.step()
    assert all(torch.equal(a, b) for a, b in zip(new, new_ref))


def test_step_hooks_run_around_each_step():
    ps = leaf_params([(4, 3)])
    opt = Muon(ps, lr=0.02)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(("pre", ps[0].detach().clone())))
    opt.register_step_post_hook(lambda o, a, k: seen.append(("post", ps[0].detach().clone())))
    ps[0].grad = torch.randn(4, 3)
    opt.step()
    assert [s for s, _ in seen] == ["pre", "post"]
    assert not torch.equal(seen[0][1], seen[1][1])


def test_tensor_lr_and_momentum_dtype():
    ps = leaf_params([(6, 4)], torch.bfloat16)
    ref = clones(ps)
    opt = Muon(ps, lr=torch.tensor(0.02), momentum_dtype=torch.float32)
    hp = fpolar.PolarGradHParams(lr=torch.tensor(0.02), weight_decay=torch.tensor(0.1), nesterov=True,
                                 scale="shape", coefficients=[(3.4445, -4.7750, 2.0315)],
                                 ns_steps=5, momentum_dtype=torch.float32)
    st = fpolar.init_state(ref, hp)
    for _ in range(2):
        g = torch.randn(6, 4, dtype=torch.bfloat16)
        set_grads([ps], [g])
        opt.step()
        with torch.no_grad():
            fpolar.polargrad_step(ref, [g], st, hp)
    assert opt.state[ps[0]]["momentum_buffer"].dtype == torch.float32
    assert torch.equal(ps[0], ref[0])


# --------------------------------------------------------------------------- schedulers and compile

SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (1 + k)),
}


def _train(opt_step, opt, sched, model, batches, after_warmup=None):
    for i, (x, y) in enumerate(batches):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt_step()
        sched.step()
        if i == 1 and after_warmup is not None:
            after_warmup()


def _mlp():
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 2))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_do_not_recompile_a_compiled_step(name):
    torch.manual_seed(2)
    torch._dynamo.reset()
    model = _mlp()
    twin = copy.deepcopy(model)
    batches = [(torch.randn(4, 6), torch.randn(4, 2)) for _ in range(20)]
    opt = Muon(model.parameters(), lr=0.05, adamw_lr=1e-2)
    sched = SCHEDULERS[name](opt)
    compiled = torch.compile(opt.step, backend="aot_eager")  # recompiles are Dynamo's decision; skip codegen
    counters.clear()
    try:
        _train(compiled, opt, sched, model, batches,
               after_warmup=lambda: torch.compiler.set_stance("fail_on_recompile"))
    finally:
        torch.compiler.set_stance("default")
    assert counters["stats"]["unique_graphs"] >= 1
    lrs = {g["lr"] for g in opt.param_groups}
    assert len(lrs) >= 1 and opt.param_groups[0]["lr"] != 0.05  # the schedule did move the lr

    opt2 = Muon(twin.parameters(), lr=0.05, adamw_lr=1e-2)
    sched2 = SCHEDULERS[name](opt2)  # patches opt2.step: create it before taking the bound method
    _train(opt2.step, opt2, sched2, twin, batches)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inductor_compiled_step_matches_eager_with_scheduler():
    torch.manual_seed(3)
    torch._dynamo.reset()
    model = _mlp()
    twin = copy.deepcopy(model)
    batches = [(torch.randn(4, 6), torch.randn(4, 2)) for _ in range(12)]
    opt = PolarGrad(fo.param_groups(model), lr=5e-3, nesterov=True, weight_decay=0.01)
    sched = SCHEDULERS["CosineAnnealingLR"](opt)
    compiled = torch.compile(opt.step)
    counters.clear()
    try:
        _train(compiled, opt, sched, model, batches,
               after_warmup=lambda: torch.compiler.set_stance("fail_on_recompile"))
    finally:
        torch.compiler.set_stance("default")
    assert counters["stats"]["unique_graphs"] >= 1
    opt2 = PolarGrad(fo.param_groups(twin), lr=5e-3, nesterov=True, weight_decay=0.01)
    sched2 = SCHEDULERS["CosineAnnealingLR"](opt2)
    _train(opt2.step, opt2, sched2, twin, batches)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- bad input


def _snapshot(opt, params):
    return (
        [p.detach().clone() for p in params],
        {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()},
        copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
        [len(g["params"]) for g in opt.param_groups],
    )


def _assert_unchanged(opt, params, snap):
    p_snap, s_snap, g_snap, n_snap = snap
    assert all(torch.equal(a, b) for a, b in zip(params, p_snap))
    assert set(s_snap) == {id(p) for p in opt.state}
    for p, s in opt.state.items():
        assert all(torch.equal(v, s_snap[id(p)][k]) for k, v in s.items())
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == g_snap
    assert [len(g["params"]) for g in opt.param_groups] == n_snap


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ps: Muon(ps, lr=-0.1), r"lr must be ≥ 0.*-0\.1"),
        (lambda ps: PolarGrad(ps, lr=1e-3, weight_decay=-1.0), r"weight_decay must be ≥ 0"),
        (lambda ps: Muon(ps, adjust_lr_fn="rms"), r"unknown adjust_lr_fn 'rms'"),
        (lambda ps: Muon(ps, momentum=1.0), r"momentum must be < 1"),
        (lambda ps: Muon(ps, ns_coefficients=(1.0, 2.0)), r"ns_coefficients must be three numbers"),
        (lambda ps: Muon(ps, scale="shape", adjust_lr_fn="original"), r"not both"),
        (lambda ps: PolarGrad(ps, lr=1e-3, scale="nucelar"), r"unknown scale 'nucelar'"),
        (lambda ps: Muon([{"params": ps, "algorithm": "sgd"}]), r"unknown algorithm 'sgd'"),
        (lambda ps: Muon([{"params": ps, "betas": (0.9, 0.9)}]), r"adamw_betas"),
        (lambda ps: Muon([{"params": ps, "algorithm": "adamw", "momentum": 0.9}]), r"'momentum'"),
        (lambda ps: Muon([{"params": ps[:1]}, {"params": ps}]), r"already in param_groups\[0\]"),
        (lambda ps: Muon([ps[0], ps[0]]), r"listed twice"),
        (lambda ps: Muon({p for p in ps}), r"not a set"),
        (lambda ps: Muon([torch.zeros(3, 3, dtype=torch.int64)]), r"int64"),
        (lambda ps: Muon([torch.zeros(3, 3, dtype=torch.complex64)]), r"complex"),
    ],
)
def test_bad_constructor_arguments_raise_naming_the_value(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(leaf_params([(4, 3), (3,)]))


def test_bad_add_param_group_leaves_the_optimizer_unchanged():
    ps = leaf_params([(4, 3), (3,)])
    opt = Muon(ps, lr=0.02)
    set_grads([ps], [torch.randn(p.shape) for p in ps])
    opt.step()
    snap = _snapshot(opt, ps)
    fresh = leaf_params([(5, 5), (5,)])
    for bad, match in [
        ({"params": fresh + [ps[1]]}, r"already in param_groups\[1\]"),
        ({"params": fresh, "lr": -1.0}, r"lr must be ≥ 0"),
        ({"params": fresh, "adjust_lr_fn": "moonlight"}, r"moonlight"),
        ({"params": fresh, "algorithm": "lion"}, r"lion"),
        ({"params": fresh, "adamw_betas": (0.9, 1.5)}, r"betas\[1\]"),
        ({"lr": 0.1}, r"'params'"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.add_param_group(bad)
        _assert_unchanged(opt, ps, snap)


def test_bad_grad_or_lr_at_step_changes_nothing_in_any_group():
    ps = leaf_params([(4, 3), (5, 5), (3,)])
    opt = Muon([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.02)
    set_grads([ps], [torch.randn(p.shape) for p in ps])
    opt.step()
    snap = _snapshot(opt, ps)
    # the last group's grad has the wrong dtype: the first group must not step either
    set_grads([ps], [torch.randn(4, 3), torch.randn(5, 5), torch.randn(3).to_sparse()])
    with pytest.raises(TypeError, match=r"param_groups\[2\].*sparse"):
        opt.step()
    _assert_unchanged(opt, ps, snap)
    set_grads([ps], [torch.randn(p.shape) for p in ps])
    opt.param_groups[1]["lr"] = -0.5  # e.g. a custom schedule gone wrong
    with pytest.raises(ValueError, match=r"param_groups\[1\]: lr must be ≥ 0, got -0.5"):
        opt.step()
    opt.param_groups[1]["lr"] = 0.02
    _assert_unchanged(opt, ps, snap)
