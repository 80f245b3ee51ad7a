"""pytest-benchmark: domain_losses, every provider × shape (benchmarks/_suite.py)."""
import pytest

import providers as P
from _suite import params, run


@pytest.mark.parametrize("case,provider,shape", params([P.Case("domain_losses")]))
def test_domain_losses(benchmark, case, provider, shape):
    run(benchmark, case, provider, shape)
