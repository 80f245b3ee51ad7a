// Shared by hutchinson_diag and hutchinson_trace: the probe chunking and the chunk's probes.
// Probes are processed B at a time (B·T columns of U per row, B chosen by the memory rule of
// class_tile.h), with the class tiles inside each chunk; only the chunk's (B, T, D) block
// of probe values is ever stored.
#pragma once
#include "../math/rademacher.h"
#include "head_gemms.h"

namespace hessalign {

// Bytes a probe chunk's buffers may hold: the memory rule's budget, capped by the backend's chunk
// size (K::kProbeChunkBytes: on the CPU, what stays in cache between the GEMM and the pass after it).
template <class K>
int64_t probe_chunk_bytes(const Head& h) { return std::min(h.budget, K::kProbeChunkBytes); }

// Probes per chunk under probe_chunk_bytes:
// each probe of the chunk holds `row_buffers` N×T buffers (U = Z̃ Vᵀ and the like) and
// `param_buffers` T×D ones (its probe block V, and the per-domain products O_e or their
// upstream: 1 + E for the diagonal).
template <class K>
int64_t choose_probe_chunk(const Head& h, int64_t num_probes, int64_t row_buffers, int64_t param_buffers) {
  const int64_t per_probe =
      std::max<int64_t>(1, h.tile * (h.N * row_buffers + h.D * param_buffers) * h.zt.element_size());
  return std::max<int64_t>(1, std::min(num_probes, probe_chunk_bytes<K>(h) / per_probe));
}

// Probes k0 .. k0+B-1 on classes c0 .. c0+T-1 as a (B·T, D) matrix, rows b·T + c, or class-major,
// rows c·B + b: a Head::rows_buffer, so that with align_rows the GEMMs read it in place (wide).
template <class scalar_t, class K>
at::Tensor probe_block(const Head& h, const K& k, uint64_t seed, int64_t k0, int64_t B, int64_t c0, int64_t T,
                       bool class_major = false) {
  at::Tensor keys = at::empty({B}, h.zt.options().dtype(at::kLong));
  auto* key_ptr = reinterpret_cast<uint64_t*>(keys.mutable_data_ptr<int64_t>());
  k.elements(B, ProbeKeysOp{seed, k0, key_ptr});
  at::Tensor V = h.rows_buffer({B * T, h.D}, h.zt.options());
  using Fill = RademacherFillOp<scalar_t, K::kStreamWidth>;
  k.elements(Fill::items(B, T, h.D),
             Fill{key_ptr, c0, T, h.D, V.stride(0), V.mutable_data_ptr<scalar_t>(), class_major ? B : 0});
  return V;
}

// U = Z̃ Vᵀ, N×(B·T): row i holds u_ib = V_b z̃_i for the chunk's probes, b-major (V: probe_block).
inline at::Tensor probe_products(const Head& h, const at::Tensor& V) { return gemm(h.wide(h.zt), h.wide(V).t()); }

}  // namespace hessalign
