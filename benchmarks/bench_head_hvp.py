"""pytest-benchmark: head_hvp, every provider × shape (benchmarks/_suite.py)."""
import pytest

import providers as P
from _suite import params, run


@pytest.mark.parametrize("case,provider,shape", params([P.Case("head_hvp")]))
def test_head_hvp(benchmark, case, provider, shape):
    run(benchmark, case, provider, shape)
