"""pytest-benchmark: penalty steps (forward + backward into features, weight, bias), kernel vs
autograd backend: HGP, Hutchinson with K = 300 probes and with the exact diagonal."""
import pytest

import providers as P
from _suite import SHAPES, params, run

CASES = (params([P.Case("hgp_step"), P.Case("hutchinson_exact_step")])
         + params([P.Case("hutchinson_step", 300)], SHAPES[:1]))


@pytest.mark.parametrize("case,provider,shape", CASES)
def test_penalty_step(benchmark, case, provider, shape):
    run(benchmark, case, provider, shape)
