"""pytest-benchmark: hutchinson_trace with K = 1, 10 (and 300 at the small head), every provider × shape."""
import pytest

import providers as P
from _suite import SHAPES, params, run

CASES = params([P.Case("hutchinson_trace", K) for K in (1, 10)]) + params([P.Case("hutchinson_trace", 300)], SHAPES[:1])


@pytest.mark.parametrize("case,provider,shape", CASES)
def test_hutchinson_trace(benchmark, case, provider, shape):
    run(benchmark, case, provider, shape)
