"""Domain-generalization algorithms with DomainBed's interface (:class:`Algorithm`).

``get_algorithm_class(name)(input_shape, num_classes, num_domains, hparams)``; hparams
missing from the dict take the documented defaults of :mod:`hessalign_ext.hparams`.
"""

from .base import Algorithm
from .baselines import CORAL, ERM, IGA, IRM, Fish, Fishr, VREx
from .hessian import HGP, HessianAlignment, HessianAlignmentFull, Hutchinson

ALGORITHMS = ["ERM", "IRM", "VREx", "CORAL", "Fishr", "Fish", "IGA",
              "HGP", "Hutchinson", "HessianAlignment", "HessianAlignmentFull"]


def get_algorithm_class(name: str):
    """The algorithm class called ``name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    return globals()[name]


__all__ = ["Algorithm", "ALGORITHMS", "get_algorithm_class"] + ALGORITHMS
