// Every CUDA kernel of csrc/cuda/, compiled by g++ over the CPU emulation header and
// instantiated through the same launchers the GPU build uses: for float and double, and for
// float16 and bfloat16 with float accumulation, as the GPU build runs them. Built by
// tests/emu/build.py; of torch it includes only c10's two 16-bit scalar types (header-only).
#include "cuda_cpu_emu.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../../csrc/cuda/domain_stats_kernels.cuh"
#include "../../csrc/cuda/logits_kernels.cuh"
#include "../../csrc/cuda/row_kernels.cuh"
#include "../../csrc/cuda/segment_kernels.cuh"
#include "../../csrc/cuda/softmax_kernels.cuh"
#include "../../csrc/math/domain_losses.h"
#include "../../csrc/math/head_grad.h"
#include "../../csrc/math/head_hessian_diag.h"
#include "../../csrc/math/head_hessian_inner.h"
#include "../../csrc/math/head_hessian_trace.h"
#include "../../csrc/math/head_hvp.h"
#include "../../csrc/math/hgp_fused.h"
#include "../../csrc/math/hutchinson_diag.h"
#include "../../csrc/math/hutchinson_trace.h"
#include "../../csrc/math/logits_hvp.h"
#include "../../csrc/math/loss_rows.h"

namespace hessalign {

#define HE_ROWS(...) template int launch_rows<__VA_ARGS__>(index_t, const __VA_ARGS__&, cudaStream_t);
#define HE_ELEMENTS(...) template int launch_elements<__VA_ARGS__>(index_t, const __VA_ARGS__&, cudaStream_t);
// The kernels of a storage type S with accumulation type A.
#define HE_INSTANTIATE(S, A)                                                                                  \
  HE_ROWS(LossRowOp<S, A>)                                                                                    \
  HE_ROWS(ResidualOp<S, A>)                                                                                   \
  HE_ROWS(HvpMeanOp<S, A>)                                                                                    \
  HE_ROWS(HvpSOp<S, A>)                                                                                       \
  HE_ROWS(HvpBackwardSumsOp<S, A>)                                                                            \
  HE_ROWS(HvpBackwardMapOp<S, A>)                                                                             \
  HE_ROWS(SoftmaxBackwardOp<S, A>)                                                                            \
  HE_ROWS(DiagQOp<S, A>)                                                                                      \
  HE_ROWS(DiagBackwardSumsOp<S, A>)                                                                           \
  HE_ROWS(DiagBackwardMapOp<S, A>)                                                                            \
  HE_ROWS(ProbTileOp<S, A>)                                                                                   \
  HE_ROWS(InnerTileOp<S, A>)                                                                                  \
  HE_ROWS(InnerGhatOp<S, A>)                                                                                  \
  HE_ROWS(InnerLogitsGradOp<S, A>)                                                                            \
  HE_ROWS(TraceRowOp<S, A>)                                                                                   \
  HE_ROWS(RowSqNormOp<S, A>)                                                                                  \
  HE_ROWS(TraceBackwardOp<S, A>)                                                                              \
  HE_ROWS(HutchinsonVarOp<S, A>)                                                                              \
  HE_ROWS(HutchinsonTraceBackwardOp<S, A>)                                                                    \
  HE_ELEMENTS(RademacherFillOp<S, 1>)                                                                         \
  HE_ELEMENTS(ProbeDiagAccumulateOp<S, A, 1>)                                                                 \
  HE_ELEMENTS(ProbeUpstreamOp<S, A, 1>)                                                                       \
  HE_ELEMENTS(ClassMajorSOp<S, A, 1>)                                                                         \
  HE_ELEMENTS(ProbeClassFoldOp<S, A, 1>)                                                                      \
  HE_ROWS(LogitsHvpOp<S, A>)                                                                                  \
  HE_ROWS(LogitsHvpBackwardUOp<S, A>)                                                                         \
  HE_ROWS(LogitsHvpBackwardPOp<S, A>)                                                                         \
  HE_ROWS(ProbResidualOp<S, A>)                                                                               \
  template int launch_softmax_stats<S, A>(const S*, index_t, index_t, A*, A*, bool, A*, A*, cudaStream_t);   \
  template int launch_logits<S, A>(const S*, const S*, const S*, index_t, index_t, index_t, S*, cudaStream_t); \
  template int launch_domain_stats<S, A>(const CeParams<A>&, const DomainOffsets&, const S*, index_t, A*, A*, A*, A*, \
                                         A*, A*, cudaStream_t);

// The kernels of the accumulation type alone.
#define HE_INSTANTIATE_ACC(A)                                                                                 \
  HE_ELEMENTS(HvpSoftmaxSumsOp<A>)                                                                            \
  HE_ROWS(InnerPairOp<A>)                                                                                     \
  HE_ROWS(InnerPairBackwardOp<A>)                                                                             \
  HE_ROWS(InnerGatherOp<A>)                                                                                   \
  HE_ROWS(TargetsRowOp<A>)                                                                                    \
  template int launch_segment_sum<A>(const A*, const DomainOffsets&, A*, cudaStream_t);                       \
  template int launch_ce_coeffs<A>(const CeParams<A>&, const DomainOffsets&, A*, A*, A*, cudaStream_t);

HE_INSTANTIATE(float, float)
HE_INSTANTIATE(double, double)
HE_INSTANTIATE(c10::Half, float)
HE_INSTANTIATE(c10::BFloat16, float)
HE_INSTANTIATE_ACC(float)
HE_INSTANTIATE_ACC(double)
HE_ELEMENTS(ProbeKeysOp)

}  // namespace hessalign
