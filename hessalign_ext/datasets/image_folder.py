"""Image-folder domain datasets in DomainBed's layout: ``root/<domain>/<class>/<image>``.

PACS, VLCS, OfficeHome, TerraIncognita and DomainNet read the sub-folder DomainBed's
download script creates under ``--data-dir``; ``DomainFolder`` reads any folder laid out
the same way (environments = its sorted sub-folders). Images are resized to
``image_size`` (224 as in DomainBed) and normalised with ImageNet statistics; training
domains get DomainBed's augmentation when ``hparams["data_augmentation"]``.
"""

from __future__ import annotations

import os

from .base import MultipleDomainDataset

_MEAN, _STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class MultipleEnvironmentImageFolder(MultipleDomainDataset):
    N_STEPS = 5001
    CHECKPOINT_FREQ = 300
    N_WORKERS = 2

    def __init__(self, root, test_envs=(), augment=True, hparams=None, *, image_size: int = 224):
        super().__init__()
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        if root is None or not os.path.isdir(root):
            raise FileNotFoundError(f"image-folder dataset: no folder at {root!r} "
                                    "(expected root/<domain>/<class>/<image>)")
        environments = sorted(f.name for f in os.scandir(root) if f.is_dir())
        if not environments:
            raise FileNotFoundError(f"image-folder dataset: {root!r} has no domain sub-folders")
        if self.ENVIRONMENTS is None:
            self.ENVIRONMENTS = environments
        plain = transforms.Compose([
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(_MEAN, _STD)])
        augmented = transforms.Compose([
            transforms.RandomResizedCrop(image_size, scale=(0.7, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(),
            transforms.ToTensor(),
            transforms.Normalize(_MEAN, _STD)])
        self.datasets = []
        for i, env in enumerate(environments):
            tf = augmented if augment and i not in test_envs else plain
            self.datasets.append(ImageFolder(os.path.join(root, env), transform=tf))
        classes = {tuple(d.classes) for d in self.datasets}
        if len(classes) != 1:
            raise ValueError(f"image-folder dataset: domains of {root!r} have different class folders")
        self.input_shape = (3, image_size, image_size)
        self.num_classes = len(self.datasets[0].classes)


def _folder_dataset(name, subdir, envs, checkpoint_freq=300):
    def __init__(self, root, test_envs=(), hparams=None, *, image_size: int = 224):
        hp = hparams or {}
        if root is None:
            raise ValueError(f"{name} needs --data-dir (the folder that holds {subdir}/)")
        MultipleEnvironmentImageFolder.__init__(self, os.path.join(root, subdir), test_envs,
                                                hp.get("data_augmentation", True), hp, image_size=image_size)

    return type(name, (MultipleEnvironmentImageFolder,),
                {"__init__": __init__, "ENVIRONMENTS": envs, "CHECKPOINT_FREQ": checkpoint_freq,
                 "__doc__": f"DomainBed's {name}: ``<data-dir>/{subdir}/<domain>/<class>/<image>``."})


VLCS = _folder_dataset("VLCS", "VLCS", ["C", "L", "S", "V"])
PACS = _folder_dataset("PACS", "PACS", ["A", "C", "P", "S"])
OfficeHome = _folder_dataset("OfficeHome", "office_home", ["A", "C", "P", "R"])
TerraIncognita = _folder_dataset("TerraIncognita", "terra_incognita", ["L100", "L38", "L43", "L46"])
DomainNet = _folder_dataset("DomainNet", "domain_net", ["clip", "info", "paint", "quick", "real", "sketch"], 1000)


class DomainFolder(MultipleEnvironmentImageFolder):
    """Any folder ``<data-dir>/<domain>/<class>/<image>``; environments are its sub-folders."""

    ENVIRONMENTS = None

    def __init__(self, root, test_envs=(), hparams=None, *, image_size: int = 224):
        hp = hparams or {}
        self.ENVIRONMENTS = None
        super().__init__(root, test_envs, hp.get("data_augmentation", True), hp, image_size=image_size)
