"""Domain-generalization datasets with DomainBed's interface (see :mod:`.base`).

``ColoredDigits`` (the default) and ``RotatedDigits`` are built from scikit-learn's bundled
digits and need no download; ``ColoredMNIST`` / ``RotatedMNIST`` read MNIST files already on
disk; ``PACS``, ``VLCS``, ``OfficeHome``, ``TerraIncognita``, ``DomainNet`` and
``DomainFolder`` read image folders in DomainBed's layout.
"""

from .base import MultipleDomainDataset
from .digits import ColoredDigits, RotatedDigits
from .image_folder import (VLCS, DomainFolder, DomainNet, MultipleEnvironmentImageFolder, OfficeHome, PACS,
                           TerraIncognita)
from .mnist import ColoredMNIST, RotatedMNIST

DATASETS = ["ColoredDigits", "RotatedDigits", "ColoredMNIST", "RotatedMNIST",
            "VLCS", "PACS", "OfficeHome", "TerraIncognita", "DomainNet", "DomainFolder"]


def get_dataset_class(name: str):
    """The dataset class called ``name``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return globals()[name]


def num_environments(name: str) -> int:
    envs = get_dataset_class(name).ENVIRONMENTS
    if envs is None:
        raise ValueError(f"{name} takes its environments from the folder; build it to count them")
    return len(envs)


__all__ = ["DATASETS", "get_dataset_class", "num_environments", "MultipleDomainDataset",
           "MultipleEnvironmentImageFolder"] + DATASETS
