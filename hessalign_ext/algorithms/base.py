"""DomainBed's algorithm interface and the pieces the algorithms share."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import hparams as hparams_registry
from .. import networks


def registered_name(cls) -> str:
    """The registered algorithm a (possibly user-subclassed) class derives from."""
    from . import ALGORITHMS

    for klass in cls.__mro__:
        if klass.__name__ in ALGORITHMS:
            return klass.__name__
    return cls.__name__


class Algorithm(nn.Module):
    """A domain-generalization algorithm (DomainBed's interface).

    ``Algorithm(input_shape, num_classes, num_domains, hparams)``; ``update(minibatches,
    unlabeled=None)`` takes one ``(x, y)`` minibatch per training domain, performs one
    optimisation step and returns a dict of floats; ``predict(x)`` returns logits.
    Entries missing from ``hparams`` take the documented defaults
    (:mod:`hessalign_ext.hparams`). ``state_dict()`` also carries the optimizers' state
    and any running statistics, so a checkpoint resumes exactly.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams=None):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.num_domains = int(num_domains)
        self.hparams = hparams_registry.complete(registered_name(type(self)), dict(hparams or {}), self.input_shape)
        self.register_buffer("update_count", torch.tensor([0]))

    def update(self, minibatches, unlabeled=None):
        raise NotImplementedError

    def predict(self, x):
        raise NotImplementedError

    # ---------------------------------------------------------------- construction helpers

    def _build_network(self):
        self.featurizer = networks.Featurizer(self.input_shape, self.hparams)
        self.classifier = networks.Classifier(self.featurizer.n_outputs, self.num_classes,
                                              self.hparams["nonlinear_classifier"])
        if self.hparams.get("mlp_init") == "xavier" and isinstance(self.classifier, nn.Linear):
            nn.init.xavier_uniform_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)
        self.network = nn.Sequential(self.featurizer, self.classifier)

    def _make_optimizer(self, params=None):
        return torch.optim.Adam(self.network.parameters() if params is None else params,
                                lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

    def _init_optimizer(self):
        self.optimizer = self._make_optimizer()

    # ---------------------------------------------------------------- loss helpers

    def loss_options(self) -> dict:
        """The cross-entropy options (hparams ignore_index, class_weight, label_smoothing)."""
        return {"ignore_index": int(self.hparams["ignore_index"]),
                "class_weight": self.hparams["class_weight"],
                "label_smoothing": float(self.hparams["label_smoothing"])}

    def _class_weight(self, like):
        w = self.hparams["class_weight"]
        return None if w is None else torch.as_tensor(w, dtype=like.dtype, device=like.device)

    def ce(self, logits, y, reduction="mean"):
        return F.cross_entropy(logits, y, weight=self._class_weight(logits),
                               ignore_index=int(self.hparams["ignore_index"]),
                               label_smoothing=float(self.hparams["label_smoothing"]), reduction=reduction)

    def l2_term(self):
        """``l2_weight · Σ‖θ‖²`` over all parameters (the IRM scripts' regularizer), or 0."""
        lam = float(self.hparams.get("l2_weight", 0.0) or 0.0)
        if lam == 0.0:
            return 0.0
        return lam * sum(p.pow(2).sum() for p in self.network.parameters())

    def annealed_weight(self, lam: float, anneal_iters: int, before: float = 1.0) -> float:
        """``lam`` from step ``anneal_iters`` on, ``before`` until then; resets Adam at the jump
        when ``hparams["anneal_reset_adam"]`` (DomainBed's IRM/VREx/Fishr)."""
        step = int(self.update_count.item())
        if step == int(anneal_iters) and int(anneal_iters) > 0 and self.hparams.get("anneal_reset_adam", True):
            self._init_optimizer()
        return float(lam) if step >= int(anneal_iters) else float(before)

    def finish_loss(self, loss, weight: float):
        """Divide the loss by the penalty weight once it exceeds 1 (the IRM scripts), if enabled."""
        if self.hparams.get("anneal_rescale_loss", False) and weight > 1.0:
            return loss / weight
        return loss

    def step(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.update_count += 1

    # ---------------------------------------------------------------- state

    def _optimizers(self):
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def extra_state(self) -> dict:
        """Non-tensor state of subclasses (override together with ``load_extra_state``)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def get_extra_state(self):
        return {"optimizers": {k: v.state_dict() for k, v in self._optimizers().items()},
                "extra": self.extra_state()}

    def set_extra_state(self, state):
        # Optimizer.load_state_dict keeps the given tensors: copy them, or loading another
        # module's state_dict() would share (and step) that module's live optimizer state.
        state = copy.deepcopy(state)
        for k, opt_state in state.get("optimizers", {}).items():
            opt = getattr(self, k, None)
            if isinstance(opt, torch.optim.Optimizer):
                opt.load_state_dict(opt_state)
        self.load_extra_state(state.get("extra", {}))
