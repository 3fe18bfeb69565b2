"""The kernel autotune's selection and caching logic, and the measured kernels="auto" decision, on CPU.

No GPU: the timer is a deterministic fake (µs looked up per config / per option), the device checks
and the device name are patched, and the "launch" only records which config it was given.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings

import pytest
import torch

import fpolar
import fpolar.kernels.tuning as T
from fpolar.kernels import candidate_configs
from fpolar.polar import dispatch

BF16 = torch.bfloat16
CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it here


def _sig(config) -> tuple:
    return tuple(sorted(config.kwargs.items())) + (config.num_warps, config.num_stages)


class FakeGPU:
    """Patches the tuner's view of the machine: a CUDA device named ``name``, not capturing."""

    def __init__(self, monkeypatch, name: str = "Fake H200") -> None:
        self.name = name
        self.capturing = False
        monkeypatch.setattr(T, "tunable_device", lambda device: device.type == "cuda")
        monkeypatch.setattr(T, "_device_key", lambda device: f"{self.name}|triton test")
        monkeypatch.setattr(T, "_is_tracing_or_capturing", lambda: self.capturing)


class ConfigTimer:
    """µs per config: the candidate at ``fastest`` index of the list is the fastest; ``broken`` raise."""

    def __init__(self, candidates, fastest: int, broken: tuple[int, ...] = ()) -> None:
        self.us = {_sig(c): 100.0 + 10 * i for i, c in enumerate(candidates)}
        self.us[_sig(candidates[fastest])] = 50.0
        self.broken = {_sig(candidates[i]) for i in broken}
        self.calls = 0

    def __call__(self, fn) -> float:
        self.calls += 1
        config = fn()  # the fake run returns the config it was given
        if _sig(config) in self.broken:
            raise RuntimeError("out of shared memory")
        return self.us[_sig(config)]


def _launch(config):
    return config


def _tuner(tmp_path, timer, cache=True) -> T.KernelTuner:
    return T.KernelTuner(enabled=True, cache_path=(tmp_path / "kernel_tuning.json") if cache else None, timer=timer)


def test_candidates_are_a_handful_with_the_heuristic_first():
    for kernel in T.SYMMETRIC_KERNELS + T.MATMUL_KERNELS:
        for m, n in ((768, 3072), (768, 768), (40, 50)):
            for dtype in (BF16, torch.float32):
                cands = candidate_configs(kernel, m, n, dtype)
                assert 3 <= len(cands) <= 6
                assert _sig(cands[0]) == _sig(T.default_config(kernel, m, n, dtype))
                assert len({_sig(c) for c in cands}) == len(cands)
                for c in cands:
                    blocks = [c.kwargs[k] for k in ("BLOCK", "BLOCK_M", "BLOCK_N") if k in c.kwargs]
                    assert set(blocks) <= {64, 128, 256} and c.num_warps in (4, 8) and 3 <= c.num_stages <= 5
                    assert c.kwargs["BLOCK_K"] in ((16, 32, 64) if dtype == torch.float32 else (32, 64, 128))
                    if min(m, n) <= 64:
                        assert max(blocks) == 64
    with pytest.raises(ValueError, match="unknown kernel 'sym_foo'"):
        T.default_config("sym_foo", 8, 8, BF16)


def test_shape_buckets():
    assert [T.shape_bucket(v) for v in (1, 2, 3, 5, 7, 12, 13, 700, 768, 769, 2304, 3072, 3073)] == [
        1, 2, 3, 6, 8, 12, 16, 768, 768, 1024, 3072, 3072, 4096
    ]


def test_fastest_candidate_is_chosen_once_and_cached(monkeypatch, tmp_path):
    FakeGPU(monkeypatch)
    cands = candidate_configs("sym_gram", 768, 3072, BF16)
    timer = ConfigTimer(cands, fastest=2)
    tuner = _tuner(tmp_path, timer)
    chosen = tuner.config_for("sym_gram", 12, 768, 3072, BF16, CUDA, _launch)
    assert _sig(chosen) == _sig(cands[2]) and timer.calls == len(cands) and tuner.timed == 1
    # same key again, and a shape of the same bucket: no timing
    assert _sig(tuner.config_for("sym_gram", 12, 768, 3072, BF16, CUDA, _launch)) == _sig(cands[2])
    assert _sig(tuner.config_for("sym_gram", 11, 760, 3000, BF16, CUDA, _launch)) == _sig(cands[2])
    assert timer.calls == len(cands)
    # another kernel, dtype or bucket is another key
    tuner.config_for("sym_gram", 12, 768, 3072, torch.float16, CUDA, _launch)
    tuner.config_for("sym_gram", 12, 768, 768, BF16, CUDA, _launch)
    assert tuner.timed == 3


def test_failing_candidates_are_skipped(monkeypatch, tmp_path):
    FakeGPU(monkeypatch)
    cands = candidate_configs("ns_apply", 768, 3072, BF16)
    tuner = _tuner(tmp_path, ConfigTimer(cands, fastest=1, broken=(1,)))
    assert _sig(tuner.config_for("ns_apply", 12, 768, 3072, BF16, CUDA, _launch)) == _sig(cands[0])
    everything_broken = ConfigTimer(cands, fastest=0, broken=tuple(range(len(cands))))
    with pytest.raises(RuntimeError, match="no candidate config of ns_apply could be launched"):
        _tuner(tmp_path, everything_broken, cache=False).config_for("ns_apply", 1, 768, 3072, BF16, CUDA, _launch)


def test_disk_cache_is_keyed_by_device_name(monkeypatch, tmp_path):
    gpu = FakeGPU(monkeypatch, "Fake H200")
    cands = candidate_configs("sym_poly", 768, 768, BF16)
    _tuner(tmp_path, ConfigTimer(cands, fastest=3)).config_for("sym_poly", 12, 768, 768, BF16, CUDA, _launch)
    data = json.loads((tmp_path / "kernel_tuning.json").read_text())
    assert data["format"] == 1 and list(data["devices"]) == ["Fake H200|triton test"]
    assert list(data["devices"]["Fake H200|triton test"]["configs"]) == ["sym_poly|bfloat16|12|768|768"]

    # a new process on the same device reads it: no timing at all
    def no_timing(fn):
        raise AssertionError("timed although the cache had the key")

    fresh = _tuner(tmp_path, no_timing)
    assert _sig(fresh.config_for("sym_poly", 12, 768, 768, BF16, CUDA, _launch)) == _sig(cands[3])
    # another device name does not take it
    gpu.name = "Fake H100"
    timer = ConfigTimer(cands, fastest=1)
    other = _tuner(tmp_path, timer)
    assert _sig(other.config_for("sym_poly", 12, 768, 768, BF16, CUDA, _launch)) == _sig(cands[1])
    assert timer.calls == len(cands)
    data = json.loads((tmp_path / "kernel_tuning.json").read_text())
    assert sorted(data["devices"]) == ["Fake H100|triton test", "Fake H200|triton test"]  # both kept


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"format": 99, "devices": {}}), json.dumps([1, 2])],
    ids=["garbage", "other-format", "not-a-dict"],
)
def test_corrupt_cache_file_is_ignored_with_a_warning(monkeypatch, tmp_path, content):
    FakeGPU(monkeypatch)
    (tmp_path / "kernel_tuning.json").write_text(content)
    cands = candidate_configs("sym_gram", 768, 768, BF16)
    tuner = _tuner(tmp_path, ConfigTimer(cands, fastest=1))
    with pytest.warns(RuntimeWarning, match="ignoring the kernel tuning cache"):
        chosen = tuner.config_for("sym_gram", 12, 768, 768, BF16, CUDA, _launch)
    assert _sig(chosen) == _sig(cands[1])
    # the file was replaced by a valid one holding the new result
    assert json.loads((tmp_path / "kernel_tuning.json").read_text())["format"] == 1


def test_malformed_entries_are_ignored_with_a_warning(monkeypatch, tmp_path):
    FakeGPU(monkeypatch)
    bad = {"format": 1, "devices": {"Fake H200|triton test": {
        "configs": {"sym_gram|bfloat16|12|768|768": {"kwargs": {"BLOCK": -1}, "num_warps": 8, "num_stages": 3},
                    "nonsense": {}},
        "decisions": {"[1]": {"choice": "x", "us": {"y": 1.0}}},
    }}}
    (tmp_path / "kernel_tuning.json").write_text(json.dumps(bad))
    cands = candidate_configs("sym_gram", 768, 768, BF16)
    tuner = _tuner(tmp_path, ConfigTimer(cands, fastest=2))
    with pytest.warns(RuntimeWarning, match="ignored 3 malformed entries"):
        chosen = tuner.config_for("sym_gram", 12, 768, 768, BF16, CUDA, _launch)
    assert _sig(chosen) == _sig(cands[2])


def test_unwritable_cache_warns_and_still_tunes(monkeypatch, tmp_path):
    FakeGPU(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    cands = candidate_configs("sym_gram", 768, 768, BF16)
    tuner = T.KernelTuner(enabled=True, cache_path=blocker / "sub" / "kernel_tuning.json", timer=ConfigTimer(cands, 1))
    with pytest.warns(RuntimeWarning, match="could not write the kernel tuning cache"):
        assert _sig(tuner.config_for("sym_gram", 1, 768, 768, BF16, CUDA, _launch)) == _sig(cands[1])


def test_capture_or_tracing_never_tunes(monkeypatch, tmp_path):
    gpu = FakeGPU(monkeypatch)
    cands = candidate_configs("ns_apply", 768, 768, BF16)

    def no_timing(fn):
        raise AssertionError("timed during capture")

    tuner = _tuner(tmp_path, no_timing)
    gpu.capturing = True
    assert _sig(tuner.config_for("ns_apply", 12, 768, 768, BF16, CUDA, _launch)) == _sig(cands[0])  # heuristic
    assert tuner.timed == 0 and not (tmp_path / "kernel_tuning.json").exists()
    # a key tuned before the capture is used during it
    gpu.capturing = False
    tuner.timer = ConfigTimer(cands, fastest=2)
    tuner.config_for("ns_apply", 12, 768, 768, BF16, CUDA, _launch)
    gpu.capturing = True
    tuner.timer = no_timing
    assert _sig(tuner.config_for("ns_apply", 12, 768, 768, BF16, CUDA, _launch)) == _sig(cands[2])


def test_real_capture_check_is_consulted(monkeypatch):
    """The unpatched check asks torch.cuda.is_current_stream_capturing (and torch.compiler)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert T._is_tracing_or_capturing()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert not T._is_tracing_or_capturing()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert T._is_tracing_or_capturing()


def test_off_or_cpu_gives_the_heuristic(monkeypatch, tmp_path):
    def no_timing(fn):
        raise AssertionError("timed")

    on_cpu = _tuner(tmp_path, no_timing)
    cpu = torch.device("cpu")
    assert _sig(on_cpu.config_for("sym_gram", 2, 40, 50, BF16, cpu, _launch)) == _sig(K_default("sym_gram", 40, 50))
    FakeGPU(monkeypatch)
    off = T.KernelTuner(enabled=False, cache_path=tmp_path / "c.json", timer=no_timing)
    assert _sig(off.config_for("sym_gram", 12, 768, 768, BF16, CUDA, _launch)) == _sig(K_default("sym_gram", 768, 768))
    assert not off.can_measure(CUDA)


def K_default(kernel, m, n):
    return T.default_config(kernel, m, n, BF16)


def test_environment_switches(monkeypatch, tmp_path):
    monkeypatch.delenv("FPOLAR_TUNE", raising=False)
    assert not T.KernelTuner().enabled  # off by default: fixed choices, reproducible runs
    monkeypatch.setenv("FPOLAR_TUNE", "0")
    assert not T.KernelTuner().enabled
    monkeypatch.setenv("FPOLAR_TUNE", "1")
    assert T.KernelTuner().enabled
    monkeypatch.setenv("FPOLAR_CACHE_DIR", str(tmp_path))
    assert T.cache_path_from_env() == tmp_path / "kernel_tuning.json"
    monkeypatch.setenv("FPOLAR_CACHE_DIR", "none")
    assert T.cache_path_from_env() is None
    monkeypatch.delenv("FPOLAR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert T.cache_path_from_env() == tmp_path / "xdg" / "fpolar" / "kernel_tuning.json"


# ------------------------------------ kernels="auto" measured ------------------------------------


class OptionTimer:
    """µs per option in the order the options are timed (candidate order); records how often."""

    def __init__(self, us: list[float]) -> None:
        self.us = list(us)
        self.calls = 0

    def __call__(self, fn) -> float:  # does not call fn: nothing can run on the fake device
        self.calls += 1
        return self.us[(self.calls - 1) % len(self.us)]


def _spec(**kw):
    return fpolar.PolarSpec.build("newton_schulz", kernels="auto", **kw)


def test_auto_candidates():
    labels = [c.label for c in dispatch.auto_candidates("newton_schulz", "frobenius", BF16)]
    assert labels == [
        "newton_schulz [torch matmul]", "newton_schulz [triton kernels]",
        "gram_newton_schulz", "gram_newton_schulz [triton kernels]",
    ]
    assert [c.label for c in dispatch.auto_candidates("newton_schulz", "aol", BF16)] == labels[:2]
    assert [c.label for c in dispatch.auto_candidates("gram_newton_schulz", "frobenius", BF16)] == labels[2:]
    assert [c.label for c in dispatch.auto_candidates("newton_schulz", "frobenius", torch.float64)] == [
        "newton_schulz [torch matmul]", "gram_newton_schulz"
    ]


def test_auto_picks_the_measured_fastest_once(monkeypatch, tmp_path):
    FakeGPU(monkeypatch)
    timer = OptionTimer([300.0, 120.0, 200.0, 150.0])  # NS on Triton fastest
    tuner = T.KernelTuner(enabled=True, cache_path=tmp_path / "kernel_tuning.json", timer=timer)
    monkeypatch.setattr(T, "_TUNER", tuner)
    spec = _spec()
    impl = spec.impl_for(3072, 768, torch.float32, CUDA, batch=12)  # tall: decided on its wide side
    assert (impl.method, impl.kernels, impl.polar_dtype) == ("newton_schulz", "triton", BF16)
    assert impl.reason.startswith("measured on Fake H200|triton test: newton_schulz [triton kernels] 120.0 µs")
    assert "gram_newton_schulz 200.0 µs" in impl.reason and timer.calls == 4
    # the same group again (another state, the same spec): cached, no timing
    assert spec.impl_for(768, 3072, torch.float32, CUDA, batch=12) == impl and timer.calls == 4
    # a fresh process reads the decision from disk
    def no_timing(fn):
        raise AssertionError("timed although cached")

    monkeypatch.setattr(T, "_TUNER", T.KernelTuner(enabled=True, cache_path=tmp_path / "kernel_tuning.json", timer=no_timing))
    assert spec.impl_for(768, 3072, torch.float32, CUDA, batch=12) == impl
    # other steps or another shape is another decision
    monkeypatch.setattr(T, "_TUNER", tuner)
    _spec(ns_steps=7).impl_for(768, 3072, torch.float32, CUDA, batch=12)
    spec.impl_for(768, 768, torch.float32, CUDA, batch=12)
    assert timer.calls == 12


def test_auto_under_capture_uses_a_cached_decision_or_the_rules(monkeypatch, tmp_path):
    gpu = FakeGPU(monkeypatch)
    tuner = T.KernelTuner(enabled=True, cache_path=None, timer=OptionTimer([300.0, 320.0, 90.0, 150.0]))
    monkeypatch.setattr(T, "_TUNER", tuner)
    spec = _spec()
    gpu.capturing = True
    ruled = spec.impl_for(768, 768, BF16, CUDA, batch=12)
    # the rules' decision, with the fused glue of CUDA "auto" groups
    assert ruled == dispatch.PolarImpl("newton_schulz", "torch", BF16, glue="fused") and tuner.timed == 0
    gpu.capturing = False
    measured = spec.impl_for(768, 768, BF16, CUDA, batch=12)
    assert (measured.method, measured.kernels) == ("gram_newton_schulz", "torch") and tuner.timed == 1
    gpu.capturing = True
    assert spec.impl_for(768, 768, BF16, CUDA, batch=12) == measured


def test_auto_keeps_the_rules_when_tuning_is_off_on_cpu_or_not_auto(monkeypatch):
    FakeGPU(monkeypatch)

    def no_timing(fn):
        raise AssertionError("timed")

    monkeypatch.setattr(T, "_TUNER", T.KernelTuner(enabled=False, cache_path=None, timer=no_timing))
    assert _spec().impl_for(768, 3072, BF16, CUDA, batch=12) == dispatch.PolarImpl("gram_newton_schulz", "torch", BF16, glue="fused")
    monkeypatch.setattr(T, "_TUNER", T.KernelTuner(enabled=True, cache_path=None, timer=no_timing))
    cpu = _spec().impl_for(768, 3072, torch.float32, torch.device("cpu"), batch=12)
    assert cpu == dispatch.PolarImpl("newton_schulz", "torch", torch.float32)
    forced = fpolar.PolarSpec.build("newton_schulz", kernels="torch").impl_for(768, 3072, BF16, CUDA, batch=12)
    assert forced == dispatch.PolarImpl("newton_schulz", "torch", BF16)
    # every option failing to run (here: the timer raises) leaves the rules' decision, uncached
    assert _spec().impl_for(768, 3072, BF16, CUDA, batch=12) == dispatch.PolarImpl("gram_newton_schulz", "torch", BF16, glue="fused")
    assert T.get_tuner()._decisions == {}
    assert fpolar.PolarSpec.build("qdwh").impl_for(8, 8, torch.float32, CUDA).reason == ""


def test_describe_plan_says_rule_on_cpu():
    params = [torch.randn(30, 10)]
    hp = fpolar.PolarGradHParams(lr=0.1)
    assert fpolar.describe_plan(fpolar.init_state(params, hp), hp)[0]["decided_by"] == "rule"


def test_inf_timings_round_trip_through_the_cache(monkeypatch, tmp_path):
    """An option that failed (inf µs) is written and read back without breaking the file."""
    FakeGPU(monkeypatch)
    timer = OptionTimer([math.inf, 10.0])
    tuner = T.KernelTuner(enabled=True, cache_path=tmp_path / "kernel_tuning.json", timer=timer)
    key = ("Fake H200|triton test", "probe")
    assert tuner.measured_choice(key, {"a": lambda: None, "b": lambda: None}) == ("b", {"a": math.inf, "b": 10.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = T.KernelTuner(enabled=True, cache_path=tmp_path / "kernel_tuning.json", timer=timer)
        assert fresh.cached_choice(key) == ("b", {"a": math.inf, "b": 10.0})


def test_explicit_triton_is_tuned_once_at_plan_time(monkeypatch):
    gpu = FakeGPU(monkeypatch)
    tuner = T.KernelTuner(enabled=True, cache_path=None, timer=OptionTimer([1.0]))
    monkeypatch.setattr(T, "_TUNER", tuner)
    runs = []
    key = ("prepare", "newton_schulz", 768, 3072, 12)
    assert dispatch.tune_before_use(key, CUDA, lambda: runs.append(1))
    assert not dispatch.tune_before_use(key, CUDA, lambda: runs.append(1))  # once per key
    gpu.capturing = True
    assert not dispatch.tune_before_use(key + ("other",), CUDA, lambda: runs.append(1))  # never in capture
    gpu.capturing = False
    tuner.enabled = False
    assert not dispatch.tune_before_use(key + ("other",), CUDA, lambda: runs.append(1))
    assert runs == [1]


class _Asked(Exception):
    """Raised by the recording tuner below once it has seen the kernel name: no kernel is launched."""


@pytest.mark.parametrize("tma", [False, True], ids=["pointer_loads", "tma"])
def test_lower_tile_launchers_tune_the_variant_they_launch(monkeypatch, tma):
    """Each lower-tile launcher asks the tuner for the variant it will run: the TMA kernels' tiles
    differ from the pointer-load kernels' (4 vs 8 warps), so a config tuned for one must not reach
    the other, and the heuristic it falls back to must be the right one."""
    from fpolar.kernels import _tma

    # the modules (fpolar.kernels' attributes of these names are the ops)
    sym_gram, sym_poly, sym_cross = (importlib.import_module(f"fpolar.kernels.{k}") for k in ("sym_gram", "sym_poly", "sym_cross"))
    if tma and not _tma.HAS_TENSOR_DESCRIPTOR:
        pytest.skip("this triton has no tensor descriptors")
    asked = []

    class Recorder:
        def config_for(self, kernel, batch, m, n, dtype, device, run):
            asked.append((kernel, _sig(T.default_config(kernel, 256, 256, dtype))))
            raise _Asked

    for module in (sym_gram, sym_poly, sym_cross):
        monkeypatch.setattr(module, "get_tuner", lambda: Recorder())
    x = torch.randn(2, 32, 48, dtype=BF16)
    a = (x @ x.mT).contiguous()
    launches = {
        "sym_gram": lambda: sym_gram.launch_sym_gram(x, torch.empty_like(a), tma=tma),
        "sym_poly": lambda: sym_poly.launch_sym_poly(a, torch.empty_like(a), -4.775, 2.0315, tma=tma),
        "sym_cross": lambda: sym_cross.launch_sym_cross(x, x, torch.empty_like(a), tma=tma),
    }
    for launch in launches.values():
        with pytest.raises(_Asked):
            launch()
    names = [T.loaded_through(kernel, tma) for kernel in launches]
    assert [name for name, _ in asked] == names
    assert {sig[-2] for _, sig in asked} == {4 if tma else 8}  # the heuristic's warps
