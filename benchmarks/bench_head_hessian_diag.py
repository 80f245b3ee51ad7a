"""pytest-benchmark: head_hessian_diag, every provider × shape (benchmarks/_suite.py)."""
import pytest

import providers as P
from _suite import params, run


@pytest.mark.parametrize("case,provider,shape", params([P.Case("head_hessian_diag")]))
def test_head_hessian_diag(benchmark, case, provider, shape):
    run(benchmark, case, provider, shape)
