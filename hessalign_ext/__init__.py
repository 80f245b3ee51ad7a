"""hessalign_ext: closed-form curvature of a softmax cross-entropy head, fused across domains.

Importing the package loads the compiled operator library (``torch.ops.hessalign_ext``)
and registers the ops' fake kernels and autograd formulas.
"""
import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

from . import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)
from .ops import (  # noqa: F401
    domain_losses,
    head_grad,
    head_hessian_diag,
    head_hessian_inner,
    head_hessian_trace,
    head_hvp,
    hutchinson_diag,
    hutchinson_trace,
)

__version__ = "0.1.0"
