// Shared by hutchinson_diag and hutchinson_trace: the probe chunking and the chunk's probes.
// Probes are processed B at a time (B·T columns of U per row, B chosen by the memory rule of
// head_problem.h), with the class tiles inside each chunk; only the chunk's (B, T, D) block
// of probe values is ever stored.
#pragma once
#include "../math/rademacher.h"
#include "head_problem.h"

namespace hessalign {

inline int64_t choose_probe_chunk(const Head& h, int64_t num_probes, int64_t buffers) {
  const int64_t per_probe = std::max<int64_t>(1, h.N) * h.tile * h.zt.element_size() * buffers;
  return std::max<int64_t>(1, std::min(num_probes, tile_budget_bytes() / per_probe));
}

// Probes k0 .. k0+B-1 on classes c0 .. c0+T-1 as a (B·T, D) matrix.
template <class scalar_t, class K>
at::Tensor probe_block(const Head& h, const K& k, uint64_t seed, int64_t k0, int64_t B, int64_t c0, int64_t T) {
  at::Tensor V = at::empty({B * T, h.D}, h.zt.options());
  k.elements(V.numel(), RademacherFillOp<scalar_t>{seed, k0, c0, T, h.D, V.mutable_data_ptr<scalar_t>()});
  return V;
}

// U = Z̃ Vᵀ, N×(B·T): row i holds u_ib = V_b z̃_i for the chunk's probes, b-major.
inline at::Tensor probe_products(const Head& h, const at::Tensor& V) { return at::mm(h.zt, V.t()); }

}  // namespace hessalign
