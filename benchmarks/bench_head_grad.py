"""pytest-benchmark: head_grad, every provider × shape (benchmarks/_suite.py)."""
import pytest

import providers as P
from _suite import params, run


@pytest.mark.parametrize("case,provider,shape", params([P.Case("head_grad")]))
def test_head_grad(benchmark, case, provider, shape):
    run(benchmark, case, provider, shape)
