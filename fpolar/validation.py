"""Input checks shared by the steps, raised before any tensor is touched.

Every message names the offending argument, index and value so the user can find it. The checks look
only at metadata (shapes, dtypes, layouts, devices): no host sync, and under torch.compile they become
guards rather than graph code.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .dtensor import local_tensor


def check_real_dense_float(t: Any, what: str) -> None:
    """``t`` must be a dense, real, floating-point tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{what} is a {t.layout} tensor; only dense (strided) tensors are supported")
    if t.is_complex():
        raise TypeError(f"{what} has complex dtype {t.dtype}; only real floating dtypes are supported")
    if not t.is_floating_point():
        raise TypeError(f"{what} has dtype {t.dtype}; only floating dtypes are supported")


def check_matrix_tensor(t: Any, what: str) -> None:
    """A real dense float tensor with at least 2 dims (a matrix or a batch of matrices)."""
    check_real_dense_float(t, what)
    if t.dim() < 2:
        raise ValueError(
            f"{what} has shape {tuple(t.shape)} ({t.dim()}-D); the polar step needs matrices "
            "(2-D, 3-D batches, or ≥4-D flattened to (shape[0], rest)). Send 0-/1-D tensors to adamw_step."
        )
    if t.numel() == 0:
        raise ValueError(f"{what} has shape {tuple(t.shape)} with no elements")


def check_tensor_list(xs: Any, what: str) -> list:
    if isinstance(xs, Tensor) or not isinstance(xs, Sequence):
        raise TypeError(f"{what} must be a list or tuple of tensors, got {type(xs).__name__}")
    return list(xs)


def check_params_and_grads(
    params: Sequence[Tensor], grads: Sequence[Optional[Tensor]], *, matrices: bool
) -> None:
    """Lists of equal length; each grad None or the param's shape, dtype and device."""
    params = check_tensor_list(params, "params")
    grads = check_tensor_list(grads, "grads")
    if len(params) != len(grads):
        raise ValueError(f"got {len(params)} params but {len(grads)} grads; the lists must match")
    check = check_matrix_tensor if matrices else check_real_dense_float
    for i, (p, g) in enumerate(zip(params, grads)):
        check(p, f"params[{i}]")
        check_updatable(p, f"params[{i}]")
        if g is None:
            continue
        check_real_dense_float(g, f"grads[{i}]")
        if g.shape != p.shape:
            raise ValueError(f"grads[{i}] has shape {tuple(g.shape)} but params[{i}] has shape {tuple(p.shape)}")
        if g.device != p.device:
            raise ValueError(f"grads[{i}] is on {g.device} but params[{i}] is on {p.device}")
        if g.dtype != p.dtype:
            raise ValueError(f"grads[{i}] has dtype {g.dtype} but params[{i}] has dtype {p.dtype}")
    check_distinct(params, "params")


def check_updatable(t: Tensor, what: str) -> None:
    """``t`` can be written in place: no element aliases another (an ``expand()``ed view has stride 0),
    and it is not an inference tensor outside inference mode."""
    for d, (size, stride) in enumerate(zip(t.shape, t.stride())):
        if stride == 0 and size > 1:
            raise ValueError(
                f"{what} of shape {tuple(t.shape)} has stride 0 in dim {d} (an expand()ed view): its "
                "elements share memory, so an in-place update is undefined; pass a tensor that owns its "
                "elements (e.g. .contiguous())"
            )
    if not torch.compiler.is_compiling() and t.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(
            f"{what} was created under torch.inference_mode and can't be updated in place outside it; "
            "create the parameter outside inference mode (or clone it there)"
        )


def check_distinct(tensors: Sequence[Tensor], what: str) -> None:
    """No tensor appears twice in ``tensors`` (the same object, or two tensors over the same memory with
    the same shape and strides): a step would update it twice. Names both indices."""
    if torch.compiler.is_compiling():
        # Trace time only: identity, pairwise (tensor ids and data pointers are not traceable).
        for i, t in enumerate(tensors):
            for j in range(i):
                if tensors[j] is t:
                    raise ValueError(f"{what}[{j}] and {what}[{i}] are the same tensor; it would be stepped twice")
        return
    seen: dict = {}
    for i, t in enumerate(tensors):
        keys = [("id", id(t))]
        # A DTensor's memory is its local shard (the wrapper has none of its own; its data_ptr is 0).
        local = local_tensor(t)
        if local.device.type != "meta" and local.numel() > 0:
            keys.append(("mem", local.device, local.data_ptr(), tuple(local.shape), local.stride()))
        for k in keys:
            if k in seen:
                j = seen[k]
                same = "the same tensor" if k[0] == "id" else "views of the same memory"
                raise ValueError(
                    f"{what}[{j}] and {what}[{i}] (shape {tuple(t.shape)}) are {same}; it would be stepped twice"
                )
            seen[k] = i


def check_scalar(
    value: Any,
    what: str,
    *,
    low: float = 0.0,
    high: Optional[float] = None,
    high_open: bool = False,
    low_open: bool = False,
) -> None:
    """A finite Python real or a 0-d real floating tensor with low ≤ value (< with ``low_open``) and
    value ≤ high (< with ``high_open``).

    Infinity is refused for every scalar: an infinite lr, decay or scale turns the next step into
    NaN, and an infinite eps silently zeroes every update. A tensor's value is read once here (at
    hparams construction), never in the step.
    """
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise ValueError(f"{what} must be a float or a 0-d tensor, got a tensor of shape {tuple(value.shape)}")
        if not value.is_floating_point() or value.is_complex():
            raise TypeError(f"{what} tensor must have a real floating dtype, got {value.dtype}")
        if value.requires_grad:
            raise ValueError(f"{what} tensor must not require grad")
        if value.device.type == "meta":
            raise ValueError(
                f"{what} is a tensor on the meta device (no value to check or use); "
                "put it on the params' device"
            )
        v = float(value.detach().cpu())
    elif isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{what} must be a float or a 0-d tensor, got {type(value).__name__} {value!r}")
    else:
        v = float(value)
    if v != v:
        raise ValueError(f"{what} is NaN")
    if v in (math.inf, -math.inf):
        raise ValueError(f"{what} must be finite, got {v}")
    if v < low:
        raise ValueError(f"{what} must be ≥ {low}, got {v}")
    if low_open and v == low:
        raise ValueError(f"{what} must be > {low}, got {v}")
    if high is not None and (v >= high if high_open else v > high):
        raise ValueError(f"{what} must be {'<' if high_open else '≤'} {high}, got {v}")


def check_amp_tensors(grad_scale: Any, found_inf: Any) -> None:
    """GradScaler-style arguments: ``grad_scale`` a one-element floating tensor, ``found_inf`` a
    one-element real or bool tensor; either may be None."""
    for what, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{what} must be a one-element tensor or None, got {type(t).__name__} {t!r}")
        if t.numel() != 1 or t.is_complex() or t.device.type == "meta":
            raise ValueError(f"{what} must be a one-element real tensor on a real device, got shape {tuple(t.shape)}, {t.dtype} on {t.device}")
    if grad_scale is not None and not grad_scale.is_floating_point():
        raise TypeError(f"grad_scale must be a floating tensor, got {grad_scale.dtype}")
