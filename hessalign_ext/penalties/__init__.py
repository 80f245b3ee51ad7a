"""Hessian-alignment penalties (DESIGN.md §2) on a linear softmax head, per domain.

Every penalty takes the head's input ``features`` (N, d), its ``weight`` (C, d) and
``bias`` (C,) or None, ``labels`` (N,) int64 and ``offsets`` (E+1,) int64 (domain e owns
rows ``offsets[e]:offsets[e+1]``), and returns a scalar that is differentiable with respect
to ``features``, ``weight`` and ``bias``. Parameter-shaped quantities are (C, D) blocks,
D = d + 1 with the bias as the last column (D = d without a bias).

Two backends compute the same thing:

- ``backend="kernel"`` (default): the closed-form ops of :mod:`hessalign_ext.ops`, all
  domains in one call each, closed-form backward.
- ``backend="autograd"``: an independent implementation by double backprop through an
  explicit ``F.linear`` head, one domain at a time, as the paper's reference code does
  (HGP's ``H g`` as ``‖g‖·∇‖g‖``, Hutchinson with Rademacher probes and
  ``create_graph=True``). It is the test oracle and the benchmark baseline. Unlike the
  reference code it never returns NaN at a zero gradient: the norm is taken as
  ``sqrt(‖g‖² + tiny)``, and ``sqrt(s+t)·∇sqrt(s+t) = ∇s/2 = H g`` for any ``t > 0``, so
  the product stays exactly ``H g``.

Loss options (keywords of :func:`torch.nn.functional.cross_entropy`, applied per domain):
``ignore_index=-100``, ``class_weight=None``, ``label_smoothing=0.0``, ``reduction="mean"``.

Where things live: ``hgp.py`` and ``hgp_gram.py`` (HGP and its row-space closed form; its
fused parameter-space form is the compiled op ``hessalign_ext.ops.hgp_fused``),
``hutchinson.py``, ``full.py`` (whole-Hessian alignment), ``fishr.py`` (gradient variance),
``autograd_reference.py`` (the autograd backend's pieces), ``common.py`` (checks, loss
options and their per-row coefficients).
"""

from .autograd_reference import hutchinson_diag_autograd
from .common import BACKENDS, loss_options
from .fishr import gradient_variance
from .full import head_hessian_inner_torch, hessian_alignment_full
from .hgp import hgp
from .hutchinson import hutchinson, mean_probe_seed

__all__ = [
    "hgp",
    "hutchinson",
    "hessian_alignment_full",
    "gradient_variance",
    "head_hessian_inner_torch",
    "hutchinson_diag_autograd",
    "mean_probe_seed",
    "loss_options",
    "BACKENDS",
]
