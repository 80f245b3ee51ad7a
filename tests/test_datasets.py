"""hessalign_ext.datasets: the embedded digits, MNIST files and image folders."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from hessalign_ext.datasets import (PACS, ColoredDigits, ColoredMNIST, DomainFolder, RotatedDigits, RotatedMNIST,
                                    get_dataset_class, num_environments)
from single_thread import one_torch_thread  # noqa: F401  (autouse fixture)


def within(rate, p, n, sigmas=5.0):
    """|rate − p| within `sigmas` binomial standard deviations of n draws."""
    return abs(rate - p) <= sigmas * (p * (1 - p) / n) ** 0.5


def colour_of(x):
    """The channel holding the image (the other one is exactly zero)."""
    energy = x.abs().flatten(2).sum(2)
    assert ((energy == 0).sum(1) == 1).all(), "exactly one channel must be zeroed"
    return energy.argmax(1)


def test_colored_digits_rates():
    n = 4000
    ds = ColoredDigits(n_per_domain=n, seed=0)
    assert len(ds) == 3 and ds.input_shape == (2, 8, 8) and ds.num_classes == 2
    for e, agree in enumerate([0.9, 0.8, 0.1]):
        x, y = ds[e].tensors
        assert x.shape == (n, 2, 8, 8) and set(y.unique().tolist()) == {0, 1}
        noise = (y != (ds.digits[e] < 5).long()).float().mean().item()
        agreement = (colour_of(x) == y).float().mean().item()
        assert within(noise, 0.25, n), (e, noise)
        assert within(agreement, agree, n), (e, agreement)


def test_colored_digits_is_seeded():
    a, b, c = (ColoredDigits(n_per_domain=50, seed=s) for s in (1, 1, 2))
    assert torch.equal(a[0].tensors[0], b[0].tensors[0])
    assert not torch.equal(a[0].tensors[0], c[0].tensors[0])


def test_colored_digits_domains_draw_from_disjoint_pools():
    """Each domain resamples its own third of the digits: no clean image is in two domains."""
    from hessalign_ext.datasets.digits import load_digits_tensors

    images, _ = load_digits_tensors()
    ds = ColoredDigits(n_per_domain=300, seed=0, pixel_noise=0.0)
    owners = []
    for e in range(3):
        x, _ = ds[e].tensors
        flat = x.sum(1).flatten(1)  # the coloured channel is the image itself
        match = (flat[:, None, :] - images.flatten(1)[None]).abs().sum(2).argmin(1)
        owners.append(set(match.tolist()))
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])


def test_rotated_digits():
    ds = RotatedDigits(seed=0)
    assert len(ds) == 6 and ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    sizes = [len(env) for env in ds]
    assert sum(sizes) == 1797 and max(sizes) - min(sizes) <= 1
    x0, y0 = ds[0].tensors
    assert x0.shape[1:] == (1, 8, 8) and 0 <= y0.min() and y0.max() <= 9


# ------------------------------------------------------------------------ MNIST files


def write_idx(path, array: np.ndarray, magic: int):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for size in array.shape:
            f.write(struct.pack(">I", size))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    """Tiny MNIST in torchvision's layout: 24 training and 12 test images, 28×28."""
    rng = np.random.RandomState(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 24), ("t10k", 12)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.randint(1, 256, (n, 28, 28)), 2051)
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.randint(0, 10, n), 2049)
    return tmp_path


def test_colored_mnist_from_files(mnist_root):
    ds = ColoredMNIST(str(mnist_root), seed=0)
    assert len(ds) == 3 and ds.input_shape == (2, 28, 28) and ds.num_classes == 2
    assert sum(len(env) for env in ds) == 36
    for env in ds:
        x, y = env.tensors
        assert x.shape[1:] == (2, 28, 28) and x.max() <= 1.0 and set(y.tolist()) <= {0, 1}
        colour_of(x)


def test_rotated_mnist_from_files(mnist_root):
    ds = RotatedMNIST(str(mnist_root), seed=0)
    assert len(ds) == 6 and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    x0, _ = ds[0].tensors
    x1, _ = ds[1].tensors
    assert x0.shape == (6, 1, 28, 28) and x1.shape == (6, 1, 28, 28)
    # environment 0 is unrotated: its pixels stay bytes / 255 (to the resampling's float
    # rounding); rotating by 15° interpolates between pixels
    def off_grid(x):
        return ((x * 255) - (x * 255).round()).abs().max().item()

    assert off_grid(x0) < 1e-2 < 0.1 < off_grid(x1)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST"):
        ColoredMNIST(str(tmp_path))


# ---------------------------------------------------------------------- image folders


@pytest.fixture
def image_root(tmp_path):
    """root/<domain>/<class>/<image>.png with 2 domains, 2 classes, 3 images each."""
    from PIL import Image

    rng = np.random.RandomState(0)
    for domain in ("photo", "sketch"):
        for cls in ("cat", "dog"):
            folder = tmp_path / domain / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.randint(0, 256, (10, 12, 3)).astype(np.uint8)).save(folder / f"{i}.png")
    return tmp_path


def test_domain_folder(image_root):
    ds = DomainFolder(str(image_root), test_envs=[1], image_size=16)
    assert ds.ENVIRONMENTS == ["photo", "sketch"] and len(ds) == 2
    assert ds.num_classes == 2 and ds.input_shape == (3, 16, 16)
    x, y = ds[1][0]
    assert x.shape == (3, 16, 16) and y in (0, 1)
    assert len(ds[0]) == 6


def test_named_folder_dataset_reads_its_subfolder(image_root, tmp_path):
    (tmp_path / "PACS").mkdir()
    for domain in ("photo", "sketch"):
        (image_root / domain).rename(tmp_path / "PACS" / domain)
    ds = PACS(str(tmp_path), image_size=8)
    assert len(ds) == 2 and ds.num_classes == 2 and ds[0][0][0].shape == (3, 8, 8)
    with pytest.raises(FileNotFoundError):
        PACS(str(tmp_path / "elsewhere"))


def test_registry():
    assert get_dataset_class("ColoredDigits") is ColoredDigits
    assert num_environments("ColoredDigits") == 3
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset_class("ImageNet")
