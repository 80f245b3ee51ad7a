// Device-generic host side of every op: validates and prepares the head (augmented features
// Z̃ = [Z | 1], so parameter blocks carry the bias as column D; logits Z Wᵀ + b, whose
// gradient to W̃ = [W | b] is dlᵀ Z̃), the per-row loss coefficients and the row log-sum-exps
// (the loss options: loss_options.h; the class tile: class_tile.h; the offsets:
// domain_offsets.h; the padded GEMM width: padded_width.h; the per-domain GEMMs: head_gemms.h).
// The elementwise and reduction work goes to the backend K (cpu/cpu_kernels.h or
// cuda/cuda_kernels.h), which runs the row functors of math/.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../math/cross_entropy.h"
#include "../math/domains.h"
#include "../math/tile.h"
#include "class_tile.h"
#include "domain_offsets.h"
#include "gemm.h"
#include "loss_options.h"
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
  at::Tensor c, a, b, labels;
  ClassWeights class_weights;
  LabelCheck label_check;   // the labels' values, finished by ce_params before a kernel reads them
  at::Tensor lse;           // (N,) acc dtype
  at::Tensor pbar;          // (N,) acc dtype: 1 - p of each row's max class (math/softmax.h)
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
    return {L.const_data_ptr<scalar_t>(), T, c0, lse.const_data_ptr<acc_t>(), pbar.const_data_ptr<acc_t>(),
            probs_cache.defined() && T == C ? probs_cache.const_data_ptr<acc_t>() : nullptr};
  }

  // The loss options as kernels read them, once the labels' values are checked.
  template <class acc_t>
  CeParams<acc_t> ce_params(const CeOptions& ce) {
    label_check.finish();
    return hessalign::ce_params<acc_t>(labels, class_weights, ce, C);
  }

  template <class acc_t>
  CeRows<acc_t> ce_rows() const {
    TORCH_INTERNAL_ASSERT(!label_check.pending(), op, ": labels read before their check finished");
    return {c.const_data_ptr<acc_t>(), a.const_data_ptr<acc_t>(), b.const_data_ptr<acc_t>(),
            labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr,
            class_weights.weight.defined() ? class_weights.weight.const_data_ptr<acc_t>() : nullptr};
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

  // Each row's domain index (N,) int64 on the device of `like`: written on the host and copied
  // asynchronously (a pageable copy, or computing it on the device, would wait on the GPU).
  at::Tensor row_domains(const at::Tensor& like) const {
    std::vector<int64_t> domain(N);
    for (int64_t e = 0; e < E; ++e) std::fill(domain.begin() + off[e], domain.begin() + off[e + 1], e);
    return host_to_device(domain, like);
  }

  // Per-row value of a per-domain tensor (E,): x[e(i)], one gather by each row's domain index.
  at::Tensor per_row(const at::Tensor& x) const { return x.to(acc_type).index_select(0, row_domains(x)); }
};

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
  h.class_weights = ClassWeights(ce, h.acc_type);
  return h;
}

// The logits Z Wᵀ + b (N, C) by the backend's own kernel (CUDA, small heads), not a GEMM call.
template <class scalar_t, class acc_t, class K>
at::Tensor own_logits(const Head& h, const K& k) {
  at::Tensor L = at::empty({h.N, h.C}, h.z.options());
  k.template logits<scalar_t, acc_t>(h.z.const_data_ptr<scalar_t>(), h.w.const_data_ptr<scalar_t>(),
                                     h.bias.defined() ? h.bias.const_data_ptr<scalar_t>() : nullptr, h.N, h.C, h.d,
                                     L.mutable_data_ptr<scalar_t>());
  return L;
}

// Chooses the class tile, counting the kept probabilities as one more N×T buffer, and fills
// the per-row coefficients and the row log-sum-exps and p̄ (pass 1 over the class tiles, the
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
  h.pbar = at::empty({h.N}, opts);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (h.N == 0) return;
    // The logits GEMMs are queued before the loss options are read: they overlap the labels'
    // read-back (LabelCheck).
    if constexpr (K::kFusedDomainStats) {
      if (h.num_tiles() == 1 && K::fuse_domain_stats(h.max_rows, h.C)) {
        h.logits_cache = K::logits_kernel_fits(h.N, h.C, h.d) ? own_logits<scalar_t, acc_t>(h, k) : h.logits(0, h.C);
        if (want_domain_loss) h.domain_loss = at::empty({h.E}, opts);
        k.domain_stats(h.ce_params<acc_t>(ce), h.domains, h.logits_cache.const_data_ptr<scalar_t>(), h.C,
                       h.c.mutable_data_ptr<acc_t>(), h.a.mutable_data_ptr<acc_t>(), h.b.mutable_data_ptr<acc_t>(),
                       h.lse.mutable_data_ptr<acc_t>(), h.pbar.mutable_data_ptr<acc_t>(),
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
                      c0 + T == h.C ? h.lse.mutable_data_ptr<acc_t>() : nullptr, h.pbar.mutable_data_ptr<acc_t>());
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
