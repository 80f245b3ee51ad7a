// The class tile: the memory rule that picks between one tile of all C classes (logits
// materialized once) and streaming over tiles, and the class_tile argument's check.
#pragma once
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace hessalign {

// Bytes of N×T working buffers an op may hold per class tile (the memory rule: the op's working
// buffers stay under a budget of bytes). HESSALIGN_TILE_BYTES
// overrides the backend's default (K::default_tile_bytes: 256 MiB on the CPU, 1/16 of the GPU's
// memory on CUDA, where a second pass over the logits costs more than the memory saved); the
// class_tile argument overrides both.
inline int64_t tile_budget_bytes(int64_t backend_default) {
  const char* env = std::getenv("HESSALIGN_TILE_BYTES");
  return env ? std::max<int64_t>(1, std::atoll(env)) : backend_default;
}

// Largest class tile whose `buffers` N×T buffers of `elem` bytes fit the budget; all C when
// they fit, else a multiple of 64 (at least 64).
inline int64_t choose_class_tile(int64_t N, int64_t C, int64_t elem, int64_t buffers, int64_t requested,
                                 int64_t budget) {
  if (requested > 0) return std::min(requested, C);
  const int64_t per_class = std::max<int64_t>(1, N) * elem * buffers;
  const int64_t fit = budget / per_class;
  if (fit >= C) return C;
  return std::min(C, std::max<int64_t>(64, fit / 64 * 64));
}

inline void check_class_tile(const char* op, int64_t class_tile) {
  TORCH_CHECK_VALUE(class_tile >= 0, op, ": class_tile must be >= 0 (0 picks it by the memory rule); got ",
                    class_tile);
}

}  // namespace hessalign
