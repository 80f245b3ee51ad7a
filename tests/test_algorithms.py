"""hessalign_ext.algorithms: DomainBed's interface for every algorithm and input kind."""

from __future__ import annotations

import math

import pytest
import torch

from hessalign_ext import hparams as hparams_registry
from hessalign_ext import penalties
from hessalign_ext.algorithms import ALGORITHMS, get_algorithm_class
from single_thread import one_torch_thread  # noqa: F401  (autouse fixture)

# input kind -> (input_shape, featurizer DomainBed would pick)
INPUTS = {
    "vector": ((6,), "MLP"),
    "small_image": ((2, 8, 8), "MLP"),
    "mnist_28x28": ((1, 28, 28), "MNIST_CNN"),
    "large_image": ((3, 32, 32), "ResNet"),
}
# Small networks and few probes so the whole table runs in seconds.
TINY = {"mlp_width": 8, "mlp_depth": 3, "resnet18": True, "pretrained": False, "num_probes": 3}
NUM_CLASSES, NUM_DOMAINS, ROWS = 3, 3, 4


def minibatches(input_shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(ROWS, *input_shape, generator=g).to(dtype),
             torch.randint(0, NUM_CLASSES, (ROWS,), generator=g))
            for _ in range(NUM_DOMAINS)]


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("name", ALGORITHMS)
def test_update_and_predict(name, kind):
    input_shape, featurizer = INPUTS[kind]
    torch.manual_seed(0)
    algorithm = get_algorithm_class(name)(input_shape, NUM_CLASSES, NUM_DOMAINS, dict(TINY))
    assert type(algorithm.featurizer).__name__ == featurizer
    before = [p.detach().clone() for p in algorithm.parameters()]
    out = algorithm.update(minibatches(input_shape))
    assert out and all(isinstance(v, float) and math.isfinite(v) for v in out.values()), out
    assert any(not torch.equal(p, q) for p, q in zip(before, algorithm.parameters())), "update changed nothing"
    x = torch.randn(5, *input_shape)
    assert algorithm.predict(x).shape == (5, NUM_CLASSES)


def test_missing_hparams_take_the_documented_defaults():
    algorithm = get_algorithm_class("HGP")((2, 8, 8), 2, 2, {"penalty_alpha": 0.5})
    defaults = hparams_registry.default_hparams("HGP", input_shape=(2, 8, 8))
    assert algorithm.hparams == {**defaults, "penalty_alpha": 0.5}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_random_hparams_are_reproducible_and_cover_the_defaults(name):
    defaults = hparams_registry.default_hparams(name, "ColoredDigits")
    a = hparams_registry.random_hparams(name, "ColoredDigits", 3)
    assert a == hparams_registry.random_hparams(name, "ColoredDigits", 3)
    assert set(a) == set(defaults)
    assert a != hparams_registry.random_hparams(name, "ColoredDigits", 4)


def test_hessian_algorithms_need_a_linear_head():
    with pytest.raises(ValueError, match="linear classifier"):
        get_algorithm_class("HGP")((6,), 2, 2, {"nonlinear_classifier": True})


@pytest.mark.parametrize("name", ["HGP", "HessianAlignment", "HessianAlignmentFull"])
def test_kernel_and_autograd_backends_take_the_same_step(name):
    """One update in float64 from the same initialization: same parameters afterwards."""
    batches = minibatches((6,), seed=1, dtype=torch.float64)
    results = []
    for backend in ("kernel", "autograd"):
        torch.manual_seed(0)
        algorithm = get_algorithm_class(name)((6,), NUM_CLASSES, NUM_DOMAINS, dict(TINY, backend=backend)).double()
        algorithm.update(batches)
        results.append(torch.cat([p.detach().flatten() for p in algorithm.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-12)


def test_hessian_alignment_full_penalty_is_the_explicit_frobenius_distance():
    """(1/E) Σ_e [α ‖H_e − H̄‖_F² + β ‖g_e − ḡ‖²] with H_e formed explicitly by autograd."""
    torch.manual_seed(0)
    alpha, beta = 0.7, 0.4
    algorithm = get_algorithm_class("HessianAlignmentFull")(
        (5,), NUM_CLASSES, NUM_DOMAINS, dict(TINY, mlp_width=4, penalty_alpha=alpha, penalty_beta=beta)).double()
    batches = minibatches((5,), seed=2, dtype=torch.float64)
    features = torch.cat([algorithm.featurizer(x) for x, _ in batches]).detach()
    labels = torch.cat([y for _, y in batches])
    offsets = torch.tensor([0, ROWS, 2 * ROWS, 3 * ROWS])
    penalty, _ = algorithm.penalty(features, labels, offsets)

    head = algorithm.classifier
    theta = torch.cat([head.weight, head.bias[:, None]], 1).detach().reshape(-1)
    C, d = head.weight.shape
    hessians, grads = [], []
    for e in range(NUM_DOMAINS):
        z, y = features[e * ROWS:(e + 1) * ROWS], labels[e * ROWS:(e + 1) * ROWS]

        def loss(t, z=z, y=y):
            th = t.reshape(C, d + 1)
            return torch.nn.functional.cross_entropy(z @ th[:, :d].T + th[:, d], y)

        hessians.append(torch.autograd.functional.hessian(loss, theta))
        grads.append(torch.autograd.functional.jacobian(loss, theta))
    H, g = torch.stack(hessians), torch.stack(grads)
    expected = (alpha * (H - H.mean(0)).pow(2).sum((1, 2)) + beta * (g - g.mean(0)).pow(2).sum(1)).mean()
    assert penalty.item() > 0
    torch.testing.assert_close(penalty.detach(), expected, rtol=1e-10, atol=1e-14)


def test_hgp_penalty_is_the_penalty_module():
    """The algorithm's penalty is penalties.hgp on its head with its hparams (no re-implementation)."""
    torch.manual_seed(0)
    algorithm = get_algorithm_class("HGP")((6,), NUM_CLASSES, NUM_DOMAINS, dict(TINY, penalty_alpha=2.0))
    batches = minibatches((6,))
    z = torch.cat([algorithm.featurizer(x) for x, _ in batches])
    y = torch.cat([t for _, t in batches])
    off = torch.tensor([0, ROWS, 2 * ROWS, 3 * ROWS])
    got, _ = algorithm.penalty(z, y, off)
    expected = penalties.hgp(z, algorithm.classifier.weight, algorithm.classifier.bias, y, off, 2.0,
                             algorithm.hparams["penalty_beta"])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["IRM", "Fishr", "Hutchinson", "Fish"])
def test_state_dict_resumes_exactly(name):
    """Optimizer state, annealing counters and moving averages travel in state_dict(), so a
    restored copy takes the very same next step (what training checkpoints rely on)."""
    hp = dict(TINY, irm_penalty_anneal_iters=1, penalty_anneal_iters=1)
    torch.manual_seed(0)
    a = get_algorithm_class(name)((6,), NUM_CLASSES, NUM_DOMAINS, hp)
    a.update(minibatches((6,), seed=3))
    b = get_algorithm_class(name)((6,), NUM_CLASSES, NUM_DOMAINS, hp)
    b.load_state_dict(a.state_dict())
    state = torch.get_rng_state()
    a.update(minibatches((6,), seed=4))
    torch.set_rng_state(state)
    b.update(minibatches((6,), seed=4))
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        if torch.is_tensor(p):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
