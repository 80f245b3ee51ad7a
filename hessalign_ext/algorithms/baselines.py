"""The baselines: ERM, IRM, VREx, CORAL, Fishr, Fish, IGA (as in DomainBed and their papers)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch import autograd

from .. import networks, penalties
from .base import Algorithm


def _offsets(sizes, device):
    offs = [0]
    for s in sizes:
        offs.append(offs[-1] + int(s))
    return torch.tensor(offs, dtype=torch.int64, device=device)


class ERM(Algorithm):
    """Empirical Risk Minimization: cross-entropy on all training domains pooled."""

    def __init__(self, input_shape, num_classes, num_domains, hparams=None):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self._build_network()
        self._init_optimizer()

    def update(self, minibatches, unlabeled=None):
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        nll = self.ce(self.predict(all_x), all_y)
        self.step(nll + self.l2_term())
        return {"loss": nll.item()}

    def predict(self, x):
        return self.network(x)


class _PerDomainERM(ERM):
    """ERM whose update sees each domain's logits separately (IRM, VREx)."""

    def _domain_logits(self, minibatches):
        all_logits = self.network(torch.cat([x for x, _ in minibatches]))
        return torch.split(all_logits, [x.shape[0] for x, _ in minibatches])


class IRM(_PerDomainERM):
    """Invariant Risk Minimization (Arjovsky et al. 2019), IRMv1 penalty as in DomainBed."""

    def _irm_penalty(self, logits, y):
        scale = torch.ones((), device=logits.device, dtype=logits.dtype, requires_grad=True)
        loss_1 = self.ce(logits[::2] * scale, y[::2])
        loss_2 = self.ce(logits[1::2] * scale, y[1::2])
        grad_1 = autograd.grad(loss_1, [scale], create_graph=True)[0]
        grad_2 = autograd.grad(loss_2, [scale], create_graph=True)[0]
        return (grad_1 * grad_2).sum()

    def update(self, minibatches, unlabeled=None):
        weight = self.annealed_weight(self.hparams["irm_lambda"], self.hparams["irm_penalty_anneal_iters"])
        nll, penalty = 0.0, 0.0
        for logits, (_, y) in zip(self._domain_logits(minibatches), minibatches):
            nll = nll + self.ce(logits, y)
            penalty = penalty + self._irm_penalty(logits, y)
        nll, penalty = nll / len(minibatches), penalty / len(minibatches)
        loss = self.finish_loss(nll + self.l2_term() + weight * penalty, weight)
        self.step(loss)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item(), "penalty_weight": weight}


class VREx(_PerDomainERM):
    """Variance Risk Extrapolation (Krueger et al. 2021): variance of the domain risks."""

    def update(self, minibatches, unlabeled=None):
        weight = self.annealed_weight(self.hparams["vrex_lambda"], self.hparams["vrex_penalty_anneal_iters"])
        losses = torch.stack([self.ce(logits, y) for logits, (_, y) in
                              zip(self._domain_logits(minibatches), minibatches)])
        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        loss = self.finish_loss(mean + self.l2_term() + weight * penalty, weight)
        self.step(loss)
        return {"loss": loss.item(), "nll": mean.item(), "penalty": penalty.item(), "penalty_weight": weight}


class CORAL(ERM):
    """Deep CORAL (Sun & Saenko 2016): match feature means and covariances across domains."""

    @staticmethod
    def coral(x, y):
        mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
        cent_x, cent_y = x - mean_x, y - mean_y
        cova_x = cent_x.t() @ cent_x / max(len(x) - 1, 1)
        cova_y = cent_y.t() @ cent_y / max(len(y) - 1, 1)
        return (mean_x - mean_y).pow(2).mean() + (cova_x - cova_y).pow(2).mean()

    def update(self, minibatches, unlabeled=None):
        nmb = len(minibatches)
        features = [self.featurizer(x) for x, _ in minibatches]
        objective, penalty = 0.0, 0.0
        for i in range(nmb):
            objective = objective + self.ce(self.classifier(features[i]), minibatches[i][1])
            for j in range(i + 1, nmb):
                penalty = penalty + self.coral(features[i], features[j])
        objective = objective / nmb
        if nmb > 1:
            penalty = penalty / (nmb * (nmb - 1) / 2)
        self.step(objective + self.l2_term() + self.hparams["mmd_gamma"] * penalty)
        return {"loss": objective.item(), "penalty": float(penalty.detach()) if torch.is_tensor(penalty) else penalty}


class Fishr(ERM):
    """Fishr (Rame et al. 2022): match the domains' per-sample head-gradient variances.

    The variances are computed in closed form for the linear head
    (:func:`hessalign_ext.penalties.gradient_variance`), no BackPACK. Per domain an
    exponential moving average (DomainBed's ``MovingAverage`` with the 1/(1−ema)
    correction); penalty = (1/E) Σ_e mean((v_e − v̄)²); weight 0 before
    ``penalty_anneal_iters``, ``lambda`` after, Adam reset at the jump.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams=None):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        if not isinstance(self.classifier, nn.Linear):
            raise ValueError("Fishr: the closed-form gradient variance needs a linear classifier "
                             "(hparams['nonlinear_classifier'] must be False)")
        d = self.featurizer.n_outputs + 1
        self.register_buffer("ema_data", torch.zeros(num_domains, num_classes, d))
        self.register_buffer("ema_updates", torch.zeros(num_domains, dtype=torch.int64))

    def _ema(self, e, data):
        ema = float(self.hparams["ema"])
        prev = self.ema_data[e] if int(self.ema_updates[e]) > 0 else torch.zeros_like(data)
        new = ema * prev + (1 - ema) * data
        self.ema_data[e] = new.detach()
        self.ema_updates[e] += 1
        return new / (1 - ema)

    def update(self, minibatches, unlabeled=None):
        if len(minibatches) != self.num_domains:
            raise ValueError(f"Fishr: expected {self.num_domains} minibatches, got {len(minibatches)}")
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        offsets = _offsets([x.shape[0] for x, _ in minibatches], all_x.device)
        z = self.featurizer(all_x)
        logits = self.classifier(z)
        var = penalties.gradient_variance(z, self.classifier.weight, self.classifier.bias, all_y, offsets,
                                          **self.loss_options())
        var = torch.stack([self._ema(e, var[e]) for e in range(self.num_domains)])
        penalty = (var - var.mean(0, keepdim=True)).pow(2).flatten(1).mean(1).sum() / self.num_domains
        nll = self.ce(logits, all_y)
        anneal = int(self.hparams["penalty_anneal_iters"])
        weight = self.annealed_weight(self.hparams["lambda"], anneal, before=0.0)
        loss = self.finish_loss(nll + self.l2_term() + weight * penalty, weight)
        self.step(loss)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item(), "penalty_weight": weight}


class Fish(Algorithm):
    """Fish (Shi et al. 2022): first-order gradient matching by an inner loop over domains."""

    def __init__(self, input_shape, num_classes, num_domains, hparams=None):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.network = networks.WholeFish(self.input_shape, self.num_classes, self.hparams)
        self.optimizer_inner_state = None  # the inner Adam's state, carried from step to step

    @property
    def featurizer(self):
        return self.network.net[0]

    @property
    def classifier(self):
        return self.network.net[1]

    def update(self, minibatches, unlabeled=None):
        inner = copy.deepcopy(self.network)
        opt_inner = self._make_optimizer(inner.parameters())
        if self.optimizer_inner_state is not None:
            opt_inner.load_state_dict(self.optimizer_inner_state)
        for x, y in minibatches:
            loss = self.ce(inner(x), y)
            if self.hparams.get("l2_weight", 0.0):
                loss = loss + self.hparams["l2_weight"] * sum(p.pow(2).sum() for p in inner.parameters())
            opt_inner.zero_grad(set_to_none=True)
            loss.backward()
            opt_inner.step()
        self.optimizer_inner_state = opt_inner.state_dict()
        meta_lr = float(self.hparams["meta_lr"])
        with torch.no_grad():
            for p, q in zip(self.network.parameters(), inner.parameters()):
                p.add_(meta_lr * (q - p))
            for b, c in zip(self.network.buffers(), inner.buffers()):
                b.copy_(c)
        self.update_count += 1
        return {"loss": loss.item()}

    def predict(self, x):
        return self.network(x)

    def extra_state(self):
        return {"optimizer_inner_state": self.optimizer_inner_state}

    def load_extra_state(self, state):
        self.optimizer_inner_state = state.get("optimizer_inner_state")


class IGA(ERM):
    """Inter-environmental Gradient Alignment (Koyama & Yamaguchi 2020), as in DomainBed."""

    def update(self, minibatches, unlabeled=None):
        params = list(self.network.parameters())
        total, grads = 0.0, []
        for x, y in minibatches:
            env_loss = self.ce(self.network(x), y)
            total = total + env_loss
            grads.append(autograd.grad(env_loss, params, create_graph=True))
        mean_loss = total / len(minibatches)
        mean_grad = autograd.grad(mean_loss, params, retain_graph=True)
        penalty = 0.0
        for grad in grads:
            for g, mg in zip(grad, mean_grad):
                penalty = penalty + (g - mg).pow(2).sum()
        self.step(mean_loss + self.l2_term() + self.hparams["penalty"] * penalty)
        return {"loss": mean_loss.item(), "penalty": float(penalty.detach()) if torch.is_tensor(penalty) else penalty}
