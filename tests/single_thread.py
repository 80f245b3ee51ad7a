"""An autouse fixture for the training-side tests (import it into a test module to apply it).

Their tensors are tiny, so a second torch thread adds only synchronization; when the cores
are busy with other work, OpenMP's spinning threads then slow these tests down by 20x
(measured: 18 s against 7 min for the same tests on two loaded cores).
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
