"""Hessian alignment (Hemati et al., ICCV 2023) and its exact variants.

All four share one update: each training domain gets its own featurizer forward (as in
the reference code), the features are concatenated with ``offsets``, and the penalty of
:mod:`hessalign_ext.penalties` is computed on the linear head:

    loss = (1/E) Σ_e L_e + l2_weight·‖θ‖² + w · penalty,  w = penalty_weight after
    penalty_anneal_iters steps, 1 before; loss / w when anneal_rescale_loss and w > 1.

With the DomainBed defaults (penalty_weight = 1, no annealing, l2_weight = 0) this is the
reference code's update exactly; on ColoredDigits the defaults are the CMNIST scripts'
recipe (see :mod:`hessalign_ext.hparams`).

- ``HGP``: α‖H_e g_e − H̄ḡ‖² + β‖g_e − ḡ‖² (``hgp_target`` "mean_loss" as the reference;
  "mean_of_domains" for the mean of the H_e g_e).
- ``Hutchinson``: α‖D_e − D̄‖² + β‖g_e − ḡ‖², D from ``num_probes`` Rademacher probes
  (fresh probes every step, drawn from torch's global generator).
- ``HessianAlignment``: the same with the exact closed-form diagonal (no probes, no noise).
- ``HessianAlignmentFull``: α‖H_e − H̄‖_F² + β‖g_e − ḡ‖², the whole head Hessians aligned
  exactly from the E×E matrix of Frobenius inner products (no Hessian formed); it minimizes
  the paper's bound ‖H_S − H_T‖₂ ≤ ‖H_S − H_T‖_F directly.

``hparams["backend"]``: "kernel" (the compiled ops, default) or "autograd" (double backprop
as in the reference code; slow, for comparison).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import penalties
from .base import Algorithm
from .baselines import _offsets


class _HessianAlignmentBase(Algorithm):
    def __init__(self, input_shape, num_classes, num_domains, hparams=None):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        if self.hparams["nonlinear_classifier"]:
            raise ValueError(f"{type(self).__name__}: the Hessian penalties need a linear classifier "
                             "(hparams['nonlinear_classifier'] must be False)")
        self._build_network()
        self._init_optimizer()

    def predict(self, x):
        return self.network(x)

    def penalty(self, features, labels, offsets):
        """(penalty, {"hessian": …, "gradient": …}) on the head for these features."""
        raise NotImplementedError

    def update(self, minibatches, unlabeled=None):
        features = torch.cat([self.featurizer(x) for x, _ in minibatches])
        labels = torch.cat([y for _, y in minibatches])
        offsets = _offsets([x.shape[0] for x, _ in minibatches], features.device)
        logits = self.classifier(features)
        nll = torch.stack([self.ce(logits[s:t], labels[s:t])
                           for s, t in zip(offsets.tolist(), offsets.tolist()[1:])]).mean()
        penalty, terms = self.penalty(features, labels, offsets)
        weight = self.annealed_weight(self.hparams["penalty_weight"], self.hparams["penalty_anneal_iters"])
        loss = self.finish_loss(nll + self.l2_term() + weight * penalty, weight)
        self.step(loss)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item(),
                "penalty_hessian": terms["hessian"].item(), "penalty_gradient": terms["gradient"].item(),
                "penalty_weight": weight}

    def _head(self):
        head: nn.Linear = self.classifier
        return head.weight, head.bias


class HGP(_HessianAlignmentBase):
    """Hessian-gradient-product alignment (the paper's HGP)."""

    def penalty(self, features, labels, offsets):
        w, b = self._head()
        return penalties.hgp(features, w, b, labels, offsets, self.hparams["penalty_alpha"],
                             self.hparams["penalty_beta"], backend=self.hparams["backend"],
                             mean_target=self.hparams["hgp_target"], return_terms=True, **self.loss_options())


class Hutchinson(_HessianAlignmentBase):
    """Hessian-diagonal alignment with Hutchinson's estimator (the paper's Hutchinson)."""

    def _num_probes(self):
        return int(self.hparams["num_probes"])

    def penalty(self, features, labels, offsets):
        w, b = self._head()
        k = self._num_probes()
        seed = int(torch.randint(0, 2**62, (1,)).item()) if k is not None else 0
        return penalties.hutchinson(features, w, b, labels, offsets, self.hparams["penalty_alpha"],
                                    self.hparams["penalty_beta"], num_probes=k, seed=seed,
                                    backend=self.hparams["backend"], return_terms=True, **self.loss_options())


class HessianAlignment(Hutchinson):
    """Hessian-diagonal alignment with the exact closed-form diagonal (no probes)."""

    def _num_probes(self):
        return None


class HessianAlignmentFull(_HessianAlignmentBase):
    """Exact whole-Hessian alignment in Frobenius norm (the bound on ‖H_S − H_T‖₂)."""

    def penalty(self, features, labels, offsets):
        w, b = self._head()
        return penalties.hessian_alignment_full(features, w, b, labels, offsets, self.hparams["penalty_alpha"],
                                                self.hparams["penalty_beta"], backend=self.hparams["backend"],
                                                return_terms=True, **self.loss_options())
