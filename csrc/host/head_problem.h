// Device-generic host side of every op: validates and prepares the head (augmented features
// Z̃ = [Z | 1], so parameter blocks carry the bias as column D; logits Z Wᵀ + b, whose
// gradient to W̃ = [W | b] is dlᵀ Z̃), the per-row loss coefficients, the class tiling, the
// row log-sum-exps (the per-domain GEMMs are in head_gemms.h).
// The elementwise and reduction work goes to the backend K (cpu/cpu_kernels.h or
// cuda/cuda_kernels.h), which runs the row functors of math/.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "../checks.h"
#include "../math/cross_entropy.h"
#include "../math/domains.h"
#include "../math/tile.h"
#include "gemm.h"
#include "padded_width.h"

namespace hessalign {

// float/double everywhere; half/bfloat16 too where the backend supports them (CUDA).
#define HE_DISPATCH(K, TYPE, ...)                                                                 \
  [&] {                                                                                                 \
    if constexpr (K::kReducedPrecision)                                                                 \
      return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, "hessalign_ext", __VA_ARGS__);        \
    else                                                                                                \
      return AT_DISPATCH_FLOATING_TYPES(TYPE, "hessalign_ext", __VA_ARGS__);                                       \
  }()

// torch.nn.functional.cross_entropy's options, applied to each domain's rows.
struct CeOptions {
  std::optional<at::Tensor> labels;
  int64_t ignore_index = -100;
  std::optional<at::Tensor> class_weight;
  double label_smoothing = 0.0;
  std::string reduction = "mean";
};

// The parameter lists every op entry point shares with its schema (schemas.h).
#define HE_HEAD_PARAMS const at::Tensor &features, const at::Tensor &weight, const std::optional<at::Tensor> &bias
#define HE_CE_PARAMS                                                                                  \
  int64_t ignore_index, const std::optional<at::Tensor>&class_weight, double label_smoothing,        \
      c10::string_view reduction, int64_t class_tile
// Opens an entry point: device guard, backend on the current stream, the loss options.
#define HE_ENTRY(K, labels)                            \
  [[maybe_unused]] auto he_guard = K::guard(features); \
  const K k = K::current();                            \
  const CeOptions ce = make_ce(labels, ignore_index, class_weight, label_smoothing, reduction)

inline CeOptions make_ce(const std::optional<at::Tensor>& labels, int64_t ignore_index,
                         const std::optional<at::Tensor>& class_weight, double label_smoothing,
                         c10::string_view reduction) {
  return {labels, ignore_index, class_weight, label_smoothing, std::string(reduction)};
}

// The loss options as kernels read them (math/cross_entropy.h): labels (int64) and class
// weights (acc_t, contiguous) may be undefined. With class weights, their sum is read back.
template <class acc_t>
CeParams<acc_t> ce_params(const at::Tensor& labels, const at::Tensor& class_weight, const CeOptions& ce, int64_t C) {
  return {labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr,
          class_weight.defined() ? class_weight.const_data_ptr<acc_t>() : nullptr,
          class_weight.defined() ? class_weight.sum().item<acc_t>() : acc_t(C),
          acc_t(ce.label_smoothing), ce.ignore_index, C, ce.reduction == "sum"};
}

// Bytes of N×T working buffers an op may hold per class tile: the memory rule that picks
// between one tile of all C classes (logits materialized once) and streaming over tiles.
// The memory rule: the op's working buffers stay under a budget of bytes. HESSALIGN_TILE_BYTES
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

struct Head {
  const char* op;
  at::Tensor zt;   // (N, D) features, with a ones column when there is a bias (a padded
                   // buffer when align_rows); (N, d) for an op without parameter blocks
                   // (make_head's augment = false: no N×D copy)
  at::Tensor z;    // (N, d) features, contiguous: the logits GEMM's operand (extent d)
  at::Tensor w;     // (C, d) weight
  at::Tensor bias;  // (C,) or undefined: added to the logits by the GEMM (no augmented
                    // copy of the weight)
  std::vector<int64_t> off;
  at::Tensor off_dev;     // offsets on the device of features, only when they do not fit inline
  DomainOffsets domains;  // the offsets as kernels read them (math/domains.h)
  int64_t N, d, D, C, E;
  int64_t tile;      // classes per tile: chosen by prepare, which knows whether the probabilities are kept
  int64_t buffers;   // the op's N×T working buffers, for the tile rule (probabilities not counted)
  int64_t requested_tile;  // the class_tile argument (0: the memory rule)
  int64_t max_rows;  // rows of the largest domain
  int64_t budget;  // bytes of working buffers (the memory rule)
  bool has_bias;
  bool align_rows;  // D-wide GEMM operands are zero-padded to an aligned width (align_rows_for)
  at::ScalarType acc_type;
  // per-row loss coefficients (math/cross_entropy.h), acc dtype
  at::Tensor c, a, b, labels, class_weight;
  LabelCheck label_check;   // the labels' values, finished by ce_params before a kernel reads them
  at::Tensor lse;           // (N,) acc dtype
  at::Tensor domain_loss;   // (E,) acc dtype: each domain's loss, when prepare computed it
  at::Tensor logits_cache;  // (N, C) when one tile covers all classes
  at::Tensor probs_cache;   // (N, C) softmax of logits_cache, acc dtype, when K::kCacheProbs

  int64_t num_tiles() const { return (C + tile - 1) / tile; }
  int64_t rows(int64_t e) const { return off[e + 1] - off[e]; }
  int64_t equal_rows() const { return equal_domain_rows(off); }

  // Z̃ = [Z | 1] with a bias, or Z in a padded buffer (align_rows): the D-wide GEMM operand.
  void augment() {
    if (!has_bias && !align_rows) return;
    zt = rows_buffer({N, D}, z.options());
    zt.narrow(1, 0, d).copy_(z);
    if (has_bias) zt.select(1, d).fill_(1);
  }

  at::Tensor logits(int64_t c0, int64_t T) const {
    if (logits_cache.defined()) return logits_cache;
    const bool all = c0 == 0 && T == C;  // no narrowing views: each is a dispatch on the host
    const at::Tensor wc = (all ? w : w.narrow(0, c0, T)).t();
    return bias.defined() ? gemm_bias(all ? bias : bias.narrow(0, c0, T), z, wc) : gemm(z, wc);
  }

  template <class scalar_t, class acc_t>
  LogitsTile<scalar_t, acc_t> view(const at::Tensor& L, int64_t c0, int64_t T) const {
    return {L.const_data_ptr<scalar_t>(), T, c0, lse.const_data_ptr<acc_t>(),
            probs_cache.defined() && T == C ? probs_cache.const_data_ptr<acc_t>() : nullptr};
  }

  // The loss options as kernels read them, once the labels' values are checked.
  template <class acc_t>
  CeParams<acc_t> ce_params(const CeOptions& ce) {
    label_check.finish();
    return hessalign::ce_params<acc_t>(labels, class_weight, ce, C);
  }

  template <class acc_t>
  CeRows<acc_t> ce_rows() const {
    TORCH_INTERNAL_ASSERT(!label_check.pending(), op, ": labels read before their check finished");
    return {c.const_data_ptr<acc_t>(), a.const_data_ptr<acc_t>(), b.const_data_ptr<acc_t>(),
            labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr,
            class_weight.defined() ? class_weight.const_data_ptr<acc_t>() : nullptr};
  }

  // The padded width of a D-wide buffer of any dtype: the features' 16-byte rows, so that a
  // float32 accumulator and its bfloat16 operands (gemm_add) have the same padded width.
  int64_t padded(int64_t width) const { return padded_width(width, z.element_size()); }

  // A buffer of `shape` (last dimension D) for GEMMs: contiguous, or with align_rows a view of
  // the first D columns of a buffer padded to an aligned width with zeros (wide() widens it).
  at::Tensor rows_buffer(std::vector<int64_t> shape, const at::TensorOptions& o, bool zero = false) const {
    if (!align_rows) return zero ? at::zeros(shape, o) : at::empty(shape, o);
    const int64_t width = shape.back();
    shape.back() = padded(width);
    at::Tensor buf = zero ? at::zeros(shape, o) : at::empty(shape, o);
    if (!zero) buf.narrow(-1, width, shape.back() - width).zero_();
    return buf.narrow(-1, 0, width);
  }

  // Whether t, a D-wide GEMM operand, must be copied into a padded buffer first: align_rows
  // and rows narrower than the padded width (a block the caller passed: vectors, an upstream
  // gradient; the op's own operands are rows_buffers already).
  bool needs_staging(const at::Tensor& t) const { return align_rows && t.stride(-2) < padded(t.size(-1)); }

  // Rows (dimension -2) per copy when an (E, M, D) or (M, D) operand, or a GEMM's result, is
  // staged in padded buffers of `row_bytes` a row: all M where they fit the memory rule's
  // budget, else as many as fit (a multiple of 16, at least 16). Without it the padded width
  // held a second copy of the caller's block and of the op's result (an H100 run of the bf16
  // HVP at 4×2048, d = 4096, C = 32768: peak 4165 MiB against 2112).
  int64_t stage_rows(int64_t M, int64_t row_bytes) const {
    const int64_t fit = budget / std::max<int64_t>(1, row_bytes);
    return fit >= M ? M : std::max<int64_t>(16, fit / 16 * 16);
  }

  // t as a GEMM operand: itself, or with align_rows a copy in a rows_buffer.
  at::Tensor aligned(const at::Tensor& t) const {
    if (!align_rows) return t;
    at::Tensor copy = rows_buffer(t.sizes().vec(), t.options());
    copy.copy_(t);
    return copy;
  }

  // A D-wide GEMM operand or accumulator (Z̃, a rows_buffer or an aligned() copy, or a view of
  // them along other dimensions) over its whole padded width: the GEMMs see aligned rows and
  // an aligned extent, and the zero columns add nothing. Itself without align_rows.
  at::Tensor wide(const at::Tensor& t) const {
    if (!align_rows) return t;
    const int64_t w = padded(t.size(-1));
    TORCH_INTERNAL_ASSERT(t.stride(-1) == 1 && t.dim() >= 2 && t.stride(-2) >= w, op,
                          ": a GEMM operand without its padded columns");
    std::vector<int64_t> sizes = t.sizes().vec();
    sizes.back() = w;
    return t.as_strided(sizes, t.strides(), t.storage_offset());
  }

  // Per-row value of a per-domain tensor (E,): x[e(i)], one gather by each row's domain index
  // (an asynchronous copy, no read-back).
  at::Tensor per_row(const at::Tensor& x) const {
    std::vector<int64_t> domain(N);
    for (int64_t e = 0; e < E; ++e) std::fill(domain.begin() + off[e], domain.begin() + off[e + 1], e);
    return x.to(acc_type).index_select(0, host_to_device(domain, x));
  }
};

// The loss options' checks; the labels' value check is started last and returned, for the
// caller to finish before any kernel reads labels (checks.h's LabelCheck).
[[nodiscard]] inline LabelCheck check_ce(const char* op, const at::Tensor& features, int64_t C, const CeOptions& ce,
                                         bool labels_required) {
  TORCH_CHECK_VALUE(!labels_required || ce.labels, op, ": labels are required");
  if (ce.class_weight) {
    TORCH_CHECK_VALUE(ce.labels, op, ": class_weight needs labels (it weights each row by its label's class)");
    const auto& w = *ce.class_weight;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == C, op, ": class_weight must be 1-D of length C = ", C,
                      "; got shape ", shape_str(w));
    TORCH_CHECK_VALUE(at::isFloatingType(w.scalar_type()), op, ": class_weight must be floating point; got ",
                      w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == features.device(), op, ": class_weight must be on the device of features (",
                      features.device(), "); got ", w.device());
  }
  TORCH_CHECK_VALUE(ce.label_smoothing >= 0.0 && ce.label_smoothing <= 1.0, op,
                    ": label_smoothing must be in [0, 1]; got ", ce.label_smoothing);
  TORCH_CHECK_VALUE(ce.reduction == "mean" || ce.reduction == "sum", op,
                    ": reduction must be 'mean' or 'sum'; got '", ce.reduction, "'");
  return ce.labels ? LabelCheck(op, *ce.labels, features, C, ce.ignore_index) : LabelCheck();
}

inline void check_class_tile(const char* op, int64_t class_tile) {
  TORCH_CHECK_VALUE(class_tile >= 0, op, ": class_tile must be >= 0 (0 picks it by the memory rule); got ",
                    class_tile);
}

// Validates everything and builds the head. `buffers` is the op's count of N×T working
// buffers (for the tile rule); `augment` = false skips the ones column of Z̃ for an op that
// only needs the logits. Coefficients and log-sum-exps are filled by prepare().
template <class K>
Head make_head(const char* op, const at::Tensor& features, const at::Tensor& weight,
               const std::optional<at::Tensor>& bias, const at::Tensor& offsets, const CeOptions& ce,
               bool labels_required, int64_t class_tile, int64_t buffers, bool augment = true) {
  check_head(op, features, weight, bias, K::kReducedPrecision);
  Head h;
  h.op = op;
  h.off = check_offsets(op, offsets, features);
  check_class_tile(op, class_tile);
  h.label_check = check_ce(op, features, weight.size(0), ce, labels_required);
  h.N = features.size(0);
  h.d = features.size(1);
  h.C = weight.size(0);
  h.E = int64_t(h.off.size()) - 1;
  h.has_bias = bias.has_value();
  h.D = h.d + (h.has_bias ? 1 : 0);
  h.acc_type = at::toOpMathType(features.scalar_type());
  // Non-contiguous and expanded inputs are copied here, once.
  h.align_rows = align_rows_for(h.N, h.E, h.C, h.D, features.element_size(), features.is_cuda());
  h.z = features.contiguous();
  h.zt = h.z;
  if (augment) h.augment();
  h.w = weight.contiguous();
  if (h.has_bias) h.bias = bias->contiguous();
  h.max_rows = 0;
  for (int64_t e = 0; e < h.E; ++e) h.max_rows = std::max(h.max_rows, h.rows(e));
  h.domains = domain_offsets(h.off, features, h.off_dev);
  h.budget = tile_budget_bytes(K::default_tile_bytes(features));
  h.buffers = buffers;
  h.requested_tile = class_tile;
  if (ce.labels) h.labels = ce.labels->contiguous();
  if (ce.class_weight) h.class_weight = ce.class_weight->to(h.acc_type).contiguous();
  return h;
}

// Chooses the class tile, counting the kept probabilities as one more N×T buffer, and fills
// the per-row coefficients and the row log-sum-exps (pass 1 over the class tiles, the
// last tile's kernel writing the log-sum-exps; with one tile its logits, and where the
// backend keeps them and the op reads them (keep_probs), its probabilities are kept for the
// op's later passes). Where the backend fuses this pass (K::kFusedDomainStats) and the head
// is small enough, it is one kernel after the logits GEMM, which with want_domain_loss also
// fills h.domain_loss.
template <class K>
void prepare(Head& h, const K& k, const CeOptions& ce, bool keep_probs = true, bool want_domain_loss = false) {
  const bool keeps_probs = K::kCacheProbs && keep_probs;
  h.tile = choose_class_tile(h.N, h.C, h.zt.element_size(), h.buffers + (keeps_probs ? 1 : 0), h.requested_tile,
                             h.budget);
  const auto opts = h.zt.options().dtype(h.acc_type);
  h.c = at::empty({h.N}, opts);
  h.a = at::empty({h.N}, opts);
  h.b = at::empty({h.N}, opts);
  h.lse = at::empty({h.N}, opts);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (h.N == 0) return;
    // The logits GEMMs are queued before the loss options are read: they overlap the labels'
    // read-back (LabelCheck).
    if constexpr (K::kFusedDomainStats) {
      if (h.num_tiles() == 1 && K::fuse_domain_stats(h.max_rows, h.C)) {
        h.logits_cache = h.logits(0, h.C);
        if (want_domain_loss) h.domain_loss = at::empty({h.E}, opts);
        k.domain_stats(h.ce_params<acc_t>(ce), h.domains, h.logits_cache.const_data_ptr<scalar_t>(), h.C,
                       h.c.mutable_data_ptr<acc_t>(), h.a.mutable_data_ptr<acc_t>(), h.b.mutable_data_ptr<acc_t>(),
                       h.lse.mutable_data_ptr<acc_t>(),
                       want_domain_loss ? h.domain_loss.mutable_data_ptr<acc_t>() : nullptr);
        return;
      }
    }
    // The running pair (M, S) of the rows, needed only between class tiles.
    at::Tensor M, S;
    if (h.num_tiles() > 1) M = at::empty({h.N}, opts), S = at::empty({h.N}, opts);
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      at::Tensor L = h.logits(c0, T);
      k.softmax_stats(L.const_data_ptr<scalar_t>(), h.N, T, M.defined() ? M.mutable_data_ptr<acc_t>() : nullptr,
                      S.defined() ? S.mutable_data_ptr<acc_t>() : nullptr, /*first=*/c0 == 0,
                      c0 + T == h.C ? h.lse.mutable_data_ptr<acc_t>() : nullptr);
      if (T == h.C) h.logits_cache = L;
    }
    k.ce_coeffs(h.ce_params<acc_t>(ce), h.domains, h.c.mutable_data_ptr<acc_t>(), h.a.mutable_data_ptr<acc_t>(),
                h.b.mutable_data_ptr<acc_t>());
    // One vectorized exp pass (ATen's) for every later pass's probabilities; below ~4k
    // elements the scalar exps cost less than the extra ATen call.
    if (keeps_probs && h.logits_cache.defined() && h.N * h.C >= 4096)
      h.probs_cache = h.logits_cache.to(h.acc_type).sub(h.lse.unsqueeze(1)).exp_();
  });
}

// Per-domain sums of a per-row vector (E,), by the backend's segmented reduction.
template <class K>
at::Tensor segment_sum(const Head& h, const K& k, const at::Tensor& rowvals) {
  at::Tensor out = at::empty({h.E}, rowvals.options());
  AT_DISPATCH_FLOATING_TYPES(rowvals.scalar_type(), "hessalign_ext", [&] {
    k.segment_sum(rowvals.const_data_ptr<scalar_t>(), h.domains,
                  out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace hessalign
