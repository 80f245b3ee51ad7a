"""The curvature ops, one module each (public function, fake kernel, autograd)."""
from .domain_losses import domain_losses
from .head_grad import head_grad
from .head_hessian_diag import head_hessian_diag
from .head_hessian_inner import head_hessian_inner
from .head_hessian_trace import head_hessian_trace
from .head_hvp import head_hvp
from .hgp_fused import hgp_fused
from .hutchinson_diag import hutchinson_diag
from .hutchinson_trace import hutchinson_trace
from .logits_hvp import logits_hvp
from .loss_rows import loss_rows

__all__ = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace", "head_hessian_inner",
           "hutchinson_diag", "hutchinson_trace", "logits_hvp", "loss_rows", "hgp_fused"]
