"""logits_hvp: each row's cross-entropy Hessian in logit space applied to vectors, its fake
kernel and its closed-form autograd (kernels: csrc/host/logits_hvp.h, csrc/cpu/logits_hvp_cpu.cpp,
csrc/cuda/logits_hvp_cuda.cu)."""
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


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[1])
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero terms


def _backward(ctx, grad_s, grad_m):
    """Closed form (csrc/math/logits_hvp.h), two row passes."""
    p, c, u, m = ctx.saved_tensors
    if grad_s is None and grad_m is None:
        return None, None, None
    grads = torch.ops.hessalign_ext._logits_hvp_backward(grad_s, grad_m, p, c, u, m)
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def _no_double_backward(ctx, *grads):
    raise RuntimeError("hessalign_ext.logits_hvp: double backward (differentiating the closed-form backward "
                       "again) is not supported")


torch.library.register_autograd("hessalign_ext::logits_hvp", _backward, setup_context=_setup_context)
torch.library.register_autograd("hessalign_ext::_logits_hvp_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)
