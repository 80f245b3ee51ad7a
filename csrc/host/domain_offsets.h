// The domain offsets on the host and as kernels read them (math/domains.h).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../math/domains.h"

namespace hessalign {

// Host int64 values on the device of `like`. On CUDA they go through pinned memory, so the
// copy is asynchronous: a copy from pageable memory would block the host on every call.
inline at::Tensor host_to_device(const std::vector<int64_t>& vals, const at::Tensor& like) {
  const bool cuda = like.is_cuda();
  at::Tensor host = at::empty({int64_t(vals.size())}, at::TensorOptions().dtype(at::kLong).pinned_memory(cuda));
  std::copy(vals.begin(), vals.end(), host.mutable_data_ptr<int64_t>());
  return cuda ? host.to(like.device(), at::kLong, /*non_blocking=*/true) : host;
}

// The offsets as kernels read them (math/domains.h): inline for up to kInlineDomains domains,
// else copied once to the device of `like` into `storage`.
inline DomainOffsets domain_offsets(const std::vector<int64_t>& off, const at::Tensor& like, at::Tensor& storage) {
  DomainOffsets d;
  d.E = int64_t(off.size()) - 1;
  if (d.E <= kInlineDomains) {
    d.array = nullptr;
    std::copy(off.begin(), off.end(), d.inline_off);
  } else {
    storage = host_to_device(off, like);
    d.array = storage.const_data_ptr<int64_t>();
  }
  return d;
}

// n when E > 1 domains all hold n > 0 rows (offsets off): the per-domain products are then one
// batched GEMM (one launch instead of E); 0 otherwise.
inline int64_t equal_domain_rows(const std::vector<int64_t>& off) {
  const int64_t E = int64_t(off.size()) - 1, N = off.back();
  if (E < 2 || N == 0 || N % E != 0) return 0;
  for (int64_t e = 0; e < E; ++e)
    if (off[e + 1] - off[e] != N / E) return 0;
  return N / E;
}

}  // namespace hessalign
