"""Embedded benchmarks built from scikit-learn's bundled 8×8 digits (no download).

``ColoredDigits`` follows the IRM ColoredMNIST construction (Arjovsky et al. 2019) and the
measured recipe in ``PAPER.md``: the 1,797 digits are split into one disjoint pool per
domain; each domain draws ``n_per_domain`` samples *with replacement* from its own pool,
and for every sample independently: binary label ``digit < 5`` flipped with probability
0.25, a colour that equals the label except with probability ``e`` (e = 0.1, 0.2, 0.9: the
colour agrees with the label in 90%, 80% and 10% of the three domains), and Gaussian
pixel noise σ = 0.05 (so repeated draws of a digit are distinct images). The image is put
in the colour's channel of a 2×8×8 tensor, the other channel zeroed. A model that uses the
colour gets about 10% on the test domain (env 2); the invariant (shape) classifier gets at
most 75% everywhere (the label-noise ceiling).

Splitting the digits into three domains of ~600 images without resampling does not work:
the MLP memorizes the 25% label noise (PAPER.md). With resampled, noisy draws it mostly
cannot (ERM's training accuracy stays within a few points of the colour's 90% and 80%).
``digits[e]`` keeps the digit behind every sample of domain e, for analyses of the noise.

``RotatedDigits`` is the RotatedMNIST analogue: 10 classes, one disjoint pool of digits per
domain, rotated by 0, 15, …, 75 degrees (bilinear).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import MultipleDomainDataset


def load_digits_tensors():
    """(images (1797, 8, 8) float in [0, 1], digits (1797,) int64) from scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)
    return images, torch.from_numpy(d.target.astype(np.int64))


def _pools(n_total: int, n_pools: int, gen: torch.Generator):
    perm = torch.randperm(n_total, generator=gen)
    return list(torch.tensor_split(perm, n_pools))


class ColoredDigits(MultipleDomainDataset):
    ENVIRONMENTS = ["+90%", "+80%", "-90%"]
    COLOR_FLIP = [0.1, 0.2, 0.9]
    N_STEPS = 501
    CHECKPOINT_FREQ = 50
    INPUT_SHAPE = (2, 8, 8)

    def __init__(self, root=None, test_envs=(), hparams=None, *, n_per_domain: int = 5000,
                 label_noise: float = 0.25, pixel_noise: float = 0.05, seed: int = 0):
        super().__init__()
        if n_per_domain < 1:
            raise ValueError(f"n_per_domain must be positive; got {n_per_domain}")
        gen = torch.Generator().manual_seed(int(seed))
        images, digits = load_digits_tensors()
        pools = _pools(len(images), len(self.ENVIRONMENTS), gen)
        self.datasets, self.digits = [], []
        for pool, e in zip(pools, self.COLOR_FLIP):
            idx = pool[torch.randint(len(pool), (n_per_domain,), generator=gen)]
            x = images[idx] + pixel_noise * torch.randn(n_per_domain, 8, 8, generator=gen)
            y = (digits[idx] < 5).long()
            y = y ^ (torch.rand(n_per_domain, generator=gen) < label_noise).long()
            color = y ^ (torch.rand(n_per_domain, generator=gen) < e).long()
            xx = torch.zeros(n_per_domain, 2, 8, 8)
            xx[torch.arange(n_per_domain), color] = x
            self.datasets.append(TensorDataset(xx, y))
            self.digits.append(digits[idx])
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 2


class RotatedDigits(MultipleDomainDataset):
    ENVIRONMENTS = ["0", "15", "30", "45", "60", "75"]
    N_STEPS = 1001
    CHECKPOINT_FREQ = 100
    INPUT_SHAPE = (1, 8, 8)

    def __init__(self, root=None, test_envs=(), hparams=None, *, seed: int = 0):
        super().__init__()
        from torchvision.transforms.functional import InterpolationMode, rotate

        gen = torch.Generator().manual_seed(int(seed))
        images, digits = load_digits_tensors()
        pools = _pools(len(images), len(self.ENVIRONMENTS), gen)
        self.datasets = []
        for pool, angle in zip(pools, self.ENVIRONMENTS):
            x = rotate(images[pool][:, None], float(angle), interpolation=InterpolationMode.BILINEAR, fill=[0.0])
            self.datasets.append(TensorDataset(x.contiguous(), digits[pool]))
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 10
