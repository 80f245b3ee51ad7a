"""logits_hvp: each row's cross-entropy Hessian in logit space applied to vectors, and its fake
kernel (kernels: csrc/host/logits_hvp.h, csrc/cpu/logits_hvp_cpu.cpp, csrc/cuda/logits_hvp_cuda.cu;
autograd: csrc/autograd.cpp, whose backward op takes an absent output's gradient as None)."""
import torch

from ._registry import register_fake


def logits_hvp(probs, coef, vectors):
    """``H_i u`` for the logit-space Hessian ``H_i = c_i (diag p_i − p_i p_iᵀ)`` of each row's
    loss (DESIGN.md §1; ``c`` from :func:`loss_rows`), for B vectors per row in one pass:
    ``m_ib = p_i · u_ib`` and ``s_ib = c_i p_i ⊙ (u_ib − m_ib)``.

    Args:
        probs: (N, C) softmax probabilities p_i; float32/float64 (also float16/bfloat16 on
            CUDA, accumulated in float32).
        coef: (N,) the rows' Hessian scales c_i.
        vectors: (N, B·C): row i holds B vectors u_i1 .. u_iB of C entries side by side.
        All three of one dtype and device.

    Returns:
        (s, m): s (N, B·C) the products, in the layout of ``vectors``; m (N, B) the means ``p_i · u_ib``.

    A row's dominant class (p > 0.6) takes ``u_k − m`` as ``(1 − p_k) u_k − Σ' p u``, exact for
    the probabilities as given; where the caller rounded p_k from a confident softmax, 1 − p_k
    holds p̄ only to eps/p̄ (:func:`hgp_fused` takes p̄ from the other classes instead).

    Differentiable with respect to all three through a closed-form backward op; double
    backward raises RuntimeError.
    Invalid arguments raise ValueError naming the argument.
    """
    return torch.ops.hessalign_ext.logits_hvp(probs, coef, vectors)


@register_fake("logits_hvp")
def _fake(probs, coef, vectors):
    N, C = probs.shape
    return vectors.new_empty(vectors.shape), vectors.new_empty((N, vectors.shape[1] // C))


@torch.library.register_fake("hessalign_ext::_logits_hvp_backward")
def _fake_backward(grad_s, grad_m, probs, coef, vectors, means):
    return probs.new_empty(probs.shape), coef.new_empty(coef.shape), vectors.new_empty(vectors.shape)
