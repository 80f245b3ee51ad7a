"""Shared plumbing of the op wrappers: argument normalisation and the fake kernels of every
``torch.ops.hessalign_ext`` op.

Every op's schema ends with the cross-entropy options and ``class_tile`` (csrc/schemas.h);
its backward op ``_<op>_backward(grad, *op_args)`` returns the gradients of features,
weight and bias (and vectors for head_hvp), computed in closed form by the C++ kernels.
Every op's autograd, which calls it, is C++ (csrc/autograd.cpp): a Python autograd
kernel would run on every call.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

LIB = "hessalign_ext"


def ce_args(op: str, ignore_index: int, class_weight: Optional[torch.Tensor], label_smoothing: float,
            reduction: str, class_tile: Optional[int]) -> tuple:
    """The trailing schema arguments shared by every op."""
    if class_weight is not None and class_weight.requires_grad:
        raise ValueError(f"{op}: class_weight must not require grad (it is not differentiable); "
                         "pass class_weight.detach()")
    if class_tile is not None and (not isinstance(class_tile, int) or class_tile < 1):
        raise ValueError(f"{op}: class_tile must be a positive int or None; got {class_tile!r}")
    return (int(ignore_index), class_weight, float(label_smoothing), str(reduction), int(class_tile or 0))


def as_offsets(op: str, offsets, features: torch.Tensor) -> torch.Tensor:
    """offsets as an int64 tensor; lists and tuples of ints are accepted for convenience."""
    if isinstance(offsets, (list, tuple)):
        return torch.tensor(offsets, dtype=torch.int64)
    if not isinstance(offsets, torch.Tensor):
        raise ValueError(f"{op}: offsets must be an int64 tensor (or a list of ints); got {type(offsets).__name__}")
    if offsets.requires_grad:
        raise ValueError(f"{op}: offsets must not require grad")
    return offsets


def _domains(offsets: torch.Tensor) -> int:
    return offsets.shape[0] - 1


def param_shape(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple:
    """(C, D): D = d + 1 with a bias (its last column), d without (an int added: torch 2.11's
    symbolic shapes refuse a SymInt plus a bool)."""
    return weight.shape[0], features.shape[1] + (1 if bias is not None else 0)


@functools.lru_cache(maxsize=None)
def _arg_names(op: str) -> tuple:
    return tuple(a.name for a in getattr(torch.ops.hessalign_ext, op).default._schema.arguments)


def _check_devices(op: str, args, kwargs) -> None:
    names = _arg_names(op)
    values = {**dict(zip(names, args)), **kwargs}
    first_name = names[0]
    first = values[first_name]
    for name, value in values.items():
        if not isinstance(value, torch.Tensor) or value.device == first.device:
            continue
        if name != "offsets":
            raise ValueError(f"{op}: {name} must be on the device of {first_name} ({first.device}); got {value.device}")
        if value.device.type != "cpu":
            raise ValueError(f"{op}: offsets must be on the CPU or on the device of {first_name} ({first.device}); "
                             f"got {value.device}")


def register_fake(op: str):
    """``torch.library.register_fake`` for ``hessalign_ext::op`` that first applies the C++ checks'
    device rule: every tensor argument on the device of the first (offsets also on the CPU). A meta
    tensor among real ones sends a call to the fake kernel, where the C++ checks never run and the
    result would be uninitialised memory."""
    def wrap(fn):
        @functools.wraps(fn)
        def fake(*args, **kwargs):
            _check_devices(op, args, kwargs)
            return fn(*args, **kwargs)
        torch.library.register_fake(f"{LIB}::{op}")(fake)
        return fn
    return wrap


def register(name: str, out: str, offsets_index: int) -> None:
    """Fake kernels for op ``name`` and its backward op (their autograd is C++: csrc/autograd.cpp).

    out: "domains" for an (E,) result, "pairs" for (E, E), "params" for (E, C, D). offsets_index: position of
    offsets in the op's arguments. The backward op returns the gradients of the op's leading
    arguments (features, weight, bias, and vectors for head_hvp), as many as its schema returns.
    """
    @register_fake(name)
    def _fake(*args):
        features, weight, bias = args[0], args[1], args[2]
        E = _domains(args[offsets_index])
        if out == "domains":
            return features.new_empty((E,))
        if out == "pairs":
            return features.new_empty((E, E))
        return features.new_empty((E, *param_shape(features, weight, bias)))

    returns = len(getattr(torch.ops.hessalign_ext, f"_{name}_backward").default._schema.returns)

    @torch.library.register_fake(f"{LIB}::_{name}_backward")
    def _fake_backward(grad, *args):
        # an absent bias gets an empty gradient, as from the C++ kernels
        return tuple(args[0].new_empty((0,)) if args[i] is None else args[i].new_empty(args[i].shape)
                     for i in range(returns))

