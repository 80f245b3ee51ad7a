"""DomainBed's dataset interface: a list of per-environment torch datasets."""

from __future__ import annotations


class MultipleDomainDataset:
    """``dataset[i]`` is environment i (a torch ``Dataset`` of ``(x, y)``); ``len`` counts them.

    Subclasses set ``ENVIRONMENTS`` (names), ``input_shape``, ``num_classes``, ``datasets``,
    and may override ``N_STEPS`` (default training length), ``CHECKPOINT_FREQ`` and
    ``N_WORKERS`` (loader processes for datasets that decode files).
    """

    N_STEPS = 5001
    CHECKPOINT_FREQ = 100
    N_WORKERS = 0
    ENVIRONMENTS = None
    INPUT_SHAPE = None

    datasets: list
    input_shape: tuple
    num_classes: int

    def __getitem__(self, index):
        return self.datasets[index]

    def __len__(self):
        return len(self.datasets)
