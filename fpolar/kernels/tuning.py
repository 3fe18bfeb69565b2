"""Per-device kernel configurations: a short autotune, timed once per key and cached.

The fixed tile heuristics (``symmetric_tile_config``, ``matmul_tile_config``) were measured on one
GPU and do not carry to the next. Here each kernel has a handful of candidate ``triton.Config``
(``candidate_configs``), timed once per key

    (device name, triton version) × (kernel, dtype, shape bucket)

on the first CUDA launch that needs it, with CUDA events (``cuda_event_timer``: warm-up runs, then
replays of one CUDA-graph capture, median: device time). The fastest is kept in memory and, optionally, in a JSON file
(``$FPOLAR_CACHE_DIR/kernel_tuning.json``, default ``~/.cache/fpolar``), so a later process on the same
device and triton skips the timing. The same cache holds the measured ``kernels="auto"`` decisions
(``measured_choice``, used by ``fpolar.polar.dispatch``).

When the tuner answers with the heuristic instead of timing:
- tuning is off: the default; ``FPOLAR_TUNE=1`` in the environment or ``set_tuning(True)`` turns it on
  (off by default because a measured choice can change between processes, and runs are bitwise
  reproducible only when every choice is fixed);
- the tensors are not on CUDA (CPU, the Triton interpreter);
- the launch happens while a CUDA graph is being captured or while torch.compile traces: timing
  there would be captured or traced. A key already tuned is still used there; an untuned key gets
  the heuristic for that launch (and is not cached, so a later eager launch tunes it).
A candidate that fails to compile or launch (e.g. too much shared memory on a smaller GPU) is
skipped. A cache file that cannot be read or parsed is ignored with a warning; one that cannot be
written is skipped with a warning: the cache never makes a step fail.

Timings are of the real launch on the caller's tensors (outputs are rewritten afterwards by the
launch that follows), so no memory is allocated for tuning. Values never matter, only shapes.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ._common import HAS_TRITON, matmul_tile_config, symmetric_tile_config, triton

__all__ = [
    "KernelTuner",
    "SYMMETRIC_KERNELS",
    "cache_path_from_env",
    "candidate_configs",
    "cuda_event_timer",
    "default_config",
    "get_tuner",
    "set_tuning",
    "shape_bucket",
    "tuning_enabled_from_env",
]

# Kernels whose config is one square tile (BLOCK, BLOCK_K): the lower-tile kernels, with pointer loads
# and, under the "_tma" names, through tensor descriptors (tuned apart: their fastest tiles differ).
TMA_SUFFIX = "_tma"
_LOWER_TILE_KERNELS = ("sym_gram", "sym_poly", "sym_cross")
SYMMETRIC_KERNELS = _LOWER_TILE_KERNELS + tuple(k + TMA_SUFFIX for k in _LOWER_TILE_KERNELS)
MATMUL_KERNELS = ("ns_apply",)
CACHE_FILE = "kernel_tuning.json"
CACHE_FORMAT = 1

Timer = Callable[[Callable[[], object]], float]


def tuning_enabled_from_env() -> bool:
    """``FPOLAR_TUNE`` set to anything but 0/off/false/no: tuning on. Off by default: a measured choice
    can differ from one process to the next (timing noise), and with it the rounding of every step, so
    a run is bitwise reproducible only with the fixed rules, or with a tuning cache file kept fixed."""
    return os.environ.get("FPOLAR_TUNE", "0").strip().lower() not in ("0", "off", "false", "no", "")


def cache_path_from_env() -> Optional[Path]:
    """The cache file: ``$FPOLAR_CACHE_DIR/kernel_tuning.json`` (``FPOLAR_CACHE_DIR=none``: memory only),
    default ``~/.cache/fpolar/kernel_tuning.json`` (``$XDG_CACHE_HOME`` respected)."""
    explicit = os.environ.get("FPOLAR_CACHE_DIR")
    if explicit is not None:
        if explicit.strip().lower() in ("", "none", "off", "0"):
            return None
        return Path(explicit).expanduser() / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fpolar" / CACHE_FILE


def shape_bucket(v: int) -> int:
    """Rounds ``v`` up to the next of 1, 2, 3, 4, 6, 8, 12, 16, 24, … (powers of two and 1.5× them):
    shapes within ~1.4× of each other share one tuned config. 768 and 3072 are their own buckets,
    2304 shares 3072's."""
    if v <= 1:
        return 1
    p = 1 << (v - 1).bit_length()  # next power of two ≥ v
    three_quarters = 3 * p // 4
    return three_quarters if v <= three_quarters and p >= 4 else p


def loaded_through(kernel: str, tma: bool) -> str:
    """The tuner's name for ``kernel``'s variant that loads through TMA (``tma``) or pointers."""
    return kernel + TMA_SUFFIX if tma else kernel


def _k_steps(dtype: torch.dtype) -> Tuple[int, int, int]:
    # Same bytes per K step for every dtype: fp32 takes half the 16-bit K width.
    return (16, 32, 64) if dtype == torch.float32 else (32, 64, 128)


def default_config(kernel: str, m: int, n: int, dtype: torch.dtype) -> "triton.Config":
    """The fixed heuristic: what runs when tuning is off or not possible."""
    if kernel in SYMMETRIC_KERNELS:
        return symmetric_tile_config(m, dtype, tma=kernel.endswith(TMA_SUFFIX))
    if kernel in MATMUL_KERNELS:
        return matmul_tile_config(m, n, dtype)
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {SYMMETRIC_KERNELS + MATMUL_KERNELS}")


def candidate_configs(kernel: str, m: int, n: int, dtype: torch.dtype) -> List["triton.Config"]:
    """A handful of configs for ``kernel`` on (·, m, n) in ``dtype``; the heuristic's one first.

    Tiles 64/128, K steps 32/64/128 (half for fp32), 3–5 pipeline stages. 4 warps for 64-wide tiles;
    for 128-wide ones 8 with pointer loads (a 128×128 fp32 accumulator in 4 warps spills registers
    there) and 4 or 8 through TMA (4 measured faster there). Matrices no larger than 64 on a side only
    get 64-wide tiles there (a larger tile would be mostly masked).
    """
    k_small, k_mid, k_large = _k_steps(dtype)
    first = default_config(kernel, m, n, dtype)
    if kernel in SYMMETRIC_KERNELS:
        if m <= 64:
            shapes = [(64, k_mid, 4, 3), (64, k_large, 4, 3), (64, k_small, 4, 5)]
        elif kernel.endswith(TMA_SUFFIX):
            shapes = [(128, k_mid, 8, 3), (128, k_small, 4, 4), (128, k_mid, 4, 4), (64, k_mid, 4, 4)]
        else:
            shapes = [(128, k_mid, 8, 4), (128, k_large, 8, 3), (128, k_small, 8, 5), (64, k_mid, 4, 4)]
        rest = [triton.Config({"BLOCK": b, "BLOCK_K": k}, num_warps=w, num_stages=s) for b, k, w, s in shapes]
    else:
        shapes = [(128, 128, k_mid, 8, 4), (128, 256, k_mid, 8, 3), (128, 64, k_mid, 4, 4), (64, 128, k_mid, 4, 4)]
        if m <= 64 or n <= 64:
            shapes = [(64, 64, k_mid, 4, 3), (64, 64, k_large, 4, 3), (64, 64, k_small, 4, 5)]
        rest = [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, k, w, s in shapes
        ]
    out = [first]
    for c in rest:
        if config_to_json(c) not in [config_to_json(o) for o in out]:
            out.append(c)
    return out


def config_to_json(config: "triton.Config") -> Dict[str, object]:
    return {"kwargs": dict(config.kwargs), "num_warps": config.num_warps, "num_stages": config.num_stages}


def config_from_json(record: object) -> "triton.Config":
    """Inverse of ``config_to_json``; raises ValueError on a malformed record."""
    if not isinstance(record, dict):
        raise ValueError(f"a config record must be a dict, got {type(record).__name__}")
    kwargs, warps, stages = record.get("kwargs"), record.get("num_warps"), record.get("num_stages")
    if not isinstance(kwargs, dict) or not all(isinstance(v, int) and v > 0 for v in kwargs.values()):
        raise ValueError(f"bad kwargs in config record {record!r}")
    if not isinstance(warps, int) or not isinstance(stages, int) or warps <= 0 or stages <= 0:
        raise ValueError(f"bad num_warps/num_stages in config record {record!r}")
    return triton.Config(dict(kwargs), num_warps=warps, num_stages=stages)


def cuda_event_timer(fn: Callable[[], object], warmup: int = 2, reps: int = 5) -> float:
    """Median device µs of ``fn`` over ``reps`` runs, after ``warmup`` eager runs (the first compiles the
    kernel). ``fn`` is captured once in a CUDA graph and the replays are timed with CUDA events: the
    time the GPU spends, without the host's launch cost, which is what a captured or compiled step
    pays (timed eagerly, a run of many small launches is bound by the host and the Triton launcher
    loses to cuBLAS for that reason alone). Where ``fn`` cannot be captured, its eager runs are timed."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    graph: Optional[torch.cuda.CUDAGraph] = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception:  # noqa: BLE001 - not capturable (a host read, say): time it eagerly
        graph = None
        torch.cuda.synchronize()
    run = graph.replay if graph is not None else fn
    run()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    del graph
    return statistics.median(times)


def _is_tracing_or_capturing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


_DEVICE_KEYS: Dict[Tuple[str, int], str] = {}


def _device_key(device: torch.device) -> str:
    """"<device name>|triton <version>", looked up once per device (every launch asks)."""
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    found = _DEVICE_KEYS.get((device.type, index))
    if found is None:
        name = torch.cuda.get_device_name(index) if device.type == "cuda" else device.type
        version = getattr(triton, "__version__", "none") if HAS_TRITON else "none"
        found = _DEVICE_KEYS[(device.type, index)] = f"{name}|triton {version}"
    return found


class KernelTuner:
    """Chooses kernel configs (and ``auto`` decisions) by timing, once per key; see the module doc.

    Args:
        enabled: tune at all (None: ``FPOLAR_TUNE``).
        cache_path: JSON file for the results (None: memory only; "env": ``cache_path_from_env``).
        timer: (fn) -> µs; default ``cuda_event_timer``. Tests inject a fake one.
    """

    def __init__(self, enabled: Optional[bool] = None, cache_path: object = "env", timer: Optional[Timer] = None):
        self.enabled = tuning_enabled_from_env() if enabled is None else bool(enabled)
        self.cache_path: Optional[Path] = cache_path_from_env() if cache_path == "env" else (
            None if cache_path is None else Path(cache_path)  # type: ignore[arg-type]
        )
        self.timer: Timer = timer or cuda_event_timer
        self._configs: Dict[Tuple, "triton.Config"] = {}
        self._decisions: Dict[Tuple, Dict[str, object]] = {}
        self._loaded_devices: set = set()
        self.prepared: set = set()  # plan-time warm-ups done (``fpolar.polar.dispatch.tune_before_use``)
        self._lock = threading.Lock()
        self.tuning_seconds = 0.0  # wall time spent timing candidates (configs and decisions)
        self.timed = 0  # number of keys timed (not taken from a cache)

    # ------------------------------------------------------------------ kernel configs
    def kernel_key(self, device_key: str, kernel: str, dtype: torch.dtype, batch: int, m: int, n: int) -> Tuple:
        return (device_key, kernel, str(dtype).removeprefix("torch."), shape_bucket(batch), shape_bucket(m), shape_bucket(n))

    def config_for(
        self,
        kernel: str,
        batch: int,
        m: int,
        n: int,
        dtype: torch.dtype,
        device: torch.device,
        run: Callable[["triton.Config"], object],
    ) -> "triton.Config":
        """The config to launch ``kernel`` on (batch, m, n) with; ``run(config)`` launches it once
        (called only when this key is timed now)."""
        if not self.enabled or not tunable_device(device):
            return default_config(kernel, m, n, dtype)
        device_key = _device_key(device)
        key = self.kernel_key(device_key, kernel, dtype, batch, m, n)
        found = self._configs.get(key)
        if found is not None:
            return found
        self._load(device_key)
        found = self._configs.get(key)
        if found is not None:
            return found
        if _is_tracing_or_capturing():
            return default_config(kernel, m, n, dtype)
        return self.tune(key, candidate_configs(kernel, m, n, dtype), run)

    def tune(self, key: Tuple, candidates: Sequence["triton.Config"], run: Callable[["triton.Config"], object]) -> "triton.Config":
        """Times every candidate with ``self.timer``, keeps the fastest under ``key`` (and on disk)."""
        import time

        begin = time.perf_counter()
        timings: List[float] = []
        for config in candidates:
            try:
                timings.append(float(self.timer(lambda config=config: run(config))))
            except Exception:  # a config this device cannot run (shared memory, registers): skip it
                timings.append(math.inf)
        best = min(range(len(candidates)), key=lambda i: timings[i])
        if not math.isfinite(timings[best]):
            raise RuntimeError(f"no candidate config of {key[1]} could be launched for key {key}")
        chosen = candidates[best]
        self.tuning_seconds += time.perf_counter() - begin
        self.timed += 1
        with self._lock:
            self._configs[key] = chosen
        self._save(key[0])
        return chosen

    # ------------------------------------------------------------------ measured decisions
    def measured_choice(
        self, key: Tuple, options: Dict[str, Callable[[], object]]
    ) -> Tuple[str, Dict[str, float]]:
        """Times each option (name -> fn) once per ``key`` (first element: the device key) and returns
        (fastest name, µs per name); ("", µs) when no option ran. Cached in memory and on disk like
        the configs. Callers check ``can_measure`` first."""
        found = self._decisions.get(key)
        if found is None:
            self._load(key[0])
            found = self._decisions.get(key)
        if found is None:
            import time

            begin = time.perf_counter()
            us: Dict[str, float] = {}
            for name, fn in options.items():
                try:
                    us[name] = float(self.timer(fn))
                except Exception:  # an option that cannot run here does not win
                    us[name] = math.inf
            best = min(us, key=lambda k: us[k])
            self.tuning_seconds += time.perf_counter() - begin
            if not math.isfinite(us[best]):  # nothing ran: no decision, nothing cached
                return "", us
            found = {"choice": best, "us": us}
            self.timed += 1
            with self._lock:
                self._decisions[key] = found
            self._save(key[0])
        return str(found["choice"]), dict(found["us"])  # type: ignore[arg-type]

    def cached_choice(self, key: Tuple) -> Optional[Tuple[str, Dict[str, float]]]:
        """A decision already measured for ``key`` (memory or disk), else None; never times."""
        self._load(key[0])
        found = self._decisions.get(key)
        return None if found is None else (str(found["choice"]), dict(found["us"]))  # type: ignore[arg-type]

    def can_measure(self, device: torch.device) -> bool:
        """Whether timing may run now on ``device``: tuning on, a CUDA device, not tracing/capturing."""
        return self.enabled and tunable_device(device) and not _is_tracing_or_capturing()

    def device_key(self, device: torch.device) -> str:
        return _device_key(device)

    # ------------------------------------------------------------------ disk cache
    def _read_file(self) -> dict:
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        try:
            data = json.loads(self.cache_path.read_text())
            if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("devices"), dict):
                raise ValueError("not an fpolar kernel tuning cache of format 1")
            return data
        except (OSError, ValueError) as exc:
            warnings.warn(f"fpolar: ignoring the kernel tuning cache {self.cache_path}: {exc}", RuntimeWarning, stacklevel=3)
            return {}

    def _load(self, device_key: str) -> None:
        if device_key in self._loaded_devices:
            return
        self._loaded_devices.add(device_key)
        entry = self._read_file().get("devices", {}).get(device_key)
        if not isinstance(entry, dict):
            return
        bad = 0
        for text, record in dict(entry.get("configs", {})).items():
            try:
                kernel, dtype, b, m, n = text.split("|")
                key = (device_key, kernel, dtype, int(b), int(m), int(n))
                self._configs.setdefault(key, config_from_json(record))
            except (ValueError, TypeError, AttributeError):
                bad += 1
        for text, record in dict(entry.get("decisions", {})).items():
            try:
                us = {str(k): float(v) for k, v in record["us"].items()}
                if record["choice"] not in us:
                    raise ValueError("choice not among the timed options")
                self._decisions.setdefault((device_key,) + tuple(json.loads(text)), {"choice": record["choice"], "us": us})
            except (ValueError, TypeError, KeyError, AttributeError):
                bad += 1
        if bad:
            warnings.warn(f"fpolar: ignored {bad} malformed entries of {self.cache_path}", RuntimeWarning, stacklevel=3)

    def _save(self, device_key: str) -> None:
        if self.cache_path is None:
            return
        with self._lock:
            configs = {
                "|".join(str(p) for p in key[1:]): config_to_json(c) for key, c in self._configs.items() if key[0] == device_key
            }
            decisions = {json.dumps(list(key[1:])): rec for key, rec in self._decisions.items() if key[0] == device_key}
        try:
            data = self._read_file() if self.cache_path.exists() else {}
            if not data:
                data = {"format": CACHE_FORMAT, "devices": {}}
            data["devices"][device_key] = {"configs": configs, "decisions": decisions}
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".kernel_tuning.", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)  # inf (an option that failed) as Infinity
            os.replace(tmp, self.cache_path)  # atomic: a reader never sees half a file
        except (OSError, TypeError, ValueError) as exc:
            warnings.warn(f"fpolar: could not write the kernel tuning cache {self.cache_path}: {exc}", RuntimeWarning, stacklevel=3)


def tunable_device(device: torch.device) -> bool:
    """Only CUDA devices are tuned (CPU tensors reach the kernels only under the interpreter)."""
    return device.type == "cuda" and torch.cuda.is_available()


_TUNER: Optional[KernelTuner] = None


def get_tuner() -> KernelTuner:
    """The process-wide tuner the launchers and ``kernels="auto"`` use."""
    global _TUNER
    if _TUNER is None:
        _TUNER = KernelTuner()
    return _TUNER


def set_tuning(enabled: bool = True, *, cache_path: object = "env", timer: Optional[Timer] = None) -> KernelTuner:
    """Replaces the process-wide tuner (forgetting what it measured in memory): ``set_tuning(False)``
    turns tuning off (the fixed heuristics and fixed ``auto`` rules), ``set_tuning(True)`` on."""
    global _TUNER
    _TUNER = KernelTuner(enabled=enabled, cache_path=cache_path, timer=timer)
    return _TUNER
