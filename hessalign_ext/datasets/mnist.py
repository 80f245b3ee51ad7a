"""ColoredMNIST and RotatedMNIST (DomainBed) from MNIST files already on disk.

The files are read with torchvision's ``MNIST`` loader from ``root/MNIST/raw/`` (the four
idx files, uncompressed, as torchvision stores them). Nothing is downloaded unless
``download=True``. Train and test images are pooled, shuffled with ``seed`` and dealt
round-robin to the environments, as DomainBed does.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import TensorDataset

from .base import MultipleDomainDataset


def _load_mnist(root, download: bool):
    from torchvision.datasets import MNIST

    if root is None:
        raise ValueError("MNIST datasets need --data-dir (the folder that holds MNIST/raw/)")
    try:
        tr = MNIST(root, train=True, download=download)
        te = MNIST(root, train=False, download=download)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"MNIST files not found under {os.path.join(root, 'MNIST', 'raw')} "
            "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte); download=True fetches them (hessalign: --dataset-kwargs '{\"download\": true}')"
        ) from exc
    return torch.cat([tr.data, te.data]), torch.cat([tr.targets, te.targets])


class MultipleEnvironmentMNIST(MultipleDomainDataset):
    N_WORKERS = 0

    def __init__(self, root, environments, transform, input_shape, num_classes, *, seed=0, download=False):
        super().__init__()
        images, labels = _load_mnist(root, download)
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(len(images), generator=gen)
        images, labels = images[perm], labels[perm]
        self.datasets = [transform(images[i::len(environments)], labels[i::len(environments)], env, gen)
                         for i, env in enumerate(environments)]
        self.input_shape = input_shape
        self.num_classes = num_classes


class ColoredMNIST(MultipleEnvironmentMNIST):
    """DomainBed's ColoredMNIST: 2×28×28, label ``digit < 5`` with 25% noise, colour flip 0.1/0.2/0.9."""

    ENVIRONMENTS = ["+90%", "+80%", "-90%"]
    INPUT_SHAPE = (2, 28, 28)

    def __init__(self, root, test_envs=(), hparams=None, *, seed=0, download=False):
        super().__init__(root, [0.1, 0.2, 0.9], self.color_dataset, self.INPUT_SHAPE, 2,
                         seed=seed, download=download)

    @staticmethod
    def color_dataset(images, labels, e, gen):
        n = len(labels)
        y = (labels < 5).long() ^ (torch.rand(n, generator=gen) < 0.25).long()
        color = y ^ (torch.rand(n, generator=gen) < e).long()
        x = torch.stack([images, images], dim=1).float().div_(255.0)
        x[torch.arange(n), 1 - color] = 0.0
        return TensorDataset(x, y)


class RotatedMNIST(MultipleEnvironmentMNIST):
    """DomainBed's RotatedMNIST: 1×28×28, 10 classes, rotations 0–75 degrees."""

    ENVIRONMENTS = ["0", "15", "30", "45", "60", "75"]
    INPUT_SHAPE = (1, 28, 28)

    def __init__(self, root, test_envs=(), hparams=None, *, seed=0, download=False):
        super().__init__(root, [0, 15, 30, 45, 60, 75], self.rotate_dataset, self.INPUT_SHAPE, 10,
                         seed=seed, download=download)

    @staticmethod
    def rotate_dataset(images, labels, angle, gen):
        from torchvision.transforms.functional import InterpolationMode, rotate

        x = images.float().div(255.0)[:, None]
        x = rotate(x, float(angle), interpolation=InterpolationMode.BILINEAR, fill=[0.0])
        return TensorDataset(x.contiguous(), labels.long())
