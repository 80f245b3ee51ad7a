"""logits_hvp: each row's cross-entropy Hessian in logit space applied to vectors, its fake
kernel and its closed-form autograd (kernels: csrc/host/logits_hvp.h, csrc/cpu/logits_hvp_cpu.cpp,
csrc/cuda/logits_hvp_cuda.cu)."""
import torch


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

    Differentiable with respect to all three (closed-form backward, itself differentiable).
    Invalid arguments raise ValueError naming the argument.
    """
    return torch.ops.hessalign_ext.logits_hvp(probs, coef, vectors)


@torch.library.register_fake("hessalign_ext::logits_hvp")
def _fake(probs, coef, vectors):
    N, C = probs.shape
    return vectors.new_empty(vectors.shape), vectors.new_empty((N, vectors.shape[1] // C))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[1])


def _backward(ctx, ds, dm):
    """With n_b = p · ds_b: du_b = H ds_b + dm_b p, dc = Σ_b ds_b · p ⊙ (u_b − m_b) and
    dp = Σ_b c ds_b ⊙ (u_b − m_b) − c n_b u_b + dm_b u_b."""
    p, c, u, m = ctx.saved_tensors
    N, C = p.shape
    B = u.shape[1] // C
    u3, p3 = u.view(N, B, C), p[:, None, :]
    du = dc = dp = None
    if ds is not None:
        hs, n = logits_hvp(p, c, ds)
        ds3, centred = ds.reshape(N, B, C), u3 - m[..., None]
        du = hs.view(N, B, C)
        dc = (ds3 * p3 * centred).sum((1, 2))
        dp = c[:, None] * (ds3 * centred - u3 * n[..., None]).sum(1)
    if dm is not None:
        du = p3 * dm[..., None] if du is None else du + p3 * dm[..., None]
        dp = (u3 * dm[..., None]).sum(1) if dp is None else dp + (u3 * dm[..., None]).sum(1)
    return dp, dc, None if du is None else du.reshape(N, B * C)


torch.library.register_autograd("hessalign_ext::logits_hvp", _backward, setup_context=_setup_context)
