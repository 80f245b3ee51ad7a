"""pytest-benchmark: head_hessian_trace, every provider × shape (benchmarks/_suite.py)."""
import pytest

import providers as P
from _suite import params, run


@pytest.mark.parametrize("case,provider,shape", params([P.Case("head_hessian_trace")]))
def test_head_hessian_trace(benchmark, case, provider, shape):
    run(benchmark, case, provider, shape)
