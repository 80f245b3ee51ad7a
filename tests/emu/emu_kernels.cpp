// Every CUDA kernel of csrc/cuda/, compiled by g++ over the CPU emulation header and
// instantiated for float and double through the same launchers the GPU build uses.
// Built by tests/emu/build.py; never include torch here (see cuda_cpu_emu.h).
#include "cuda_cpu_emu.h"

#include "../../csrc/cuda/domain_stats_kernels.cuh"
#include "../../csrc/cuda/row_kernels.cuh"
#include "../../csrc/cuda/segment_kernels.cuh"
#include "../../csrc/cuda/softmax_kernels.cuh"
#include "../../csrc/math/domain_losses.h"
#include "../../csrc/math/head_grad.h"
#include "../../csrc/math/head_hessian_diag.h"
#include "../../csrc/math/head_hessian_inner.h"
#include "../../csrc/math/head_hessian_trace.h"
#include "../../csrc/math/head_hvp.h"
#include "../../csrc/math/hutchinson_diag.h"
#include "../../csrc/math/hutchinson_trace.h"
#include "../../csrc/math/logits_hvp.h"
#include "../../csrc/math/loss_rows.h"

namespace hessalign {

#define HE_ROWS(...) template int launch_rows<__VA_ARGS__>(index_t, const __VA_ARGS__&, cudaStream_t);
#define HE_ELEMENTS(...) template int launch_elements<__VA_ARGS__>(index_t, const __VA_ARGS__&, cudaStream_t);
#define HE_INSTANTIATE(T)                                                                                     \
  HE_ROWS(LossRowOp<T, T>)                                                                                    \
  HE_ROWS(ResidualOp<T, T>)                                                                                   \
  HE_ROWS(HvpMeanOp<T, T>)                                                                                    \
  HE_ROWS(HvpSOp<T, T>)                                                                                       \
  HE_ROWS(HvpBackwardSumsOp<T, T>)                                                                            \
  HE_ROWS(HvpBackwardMapOp<T, T>)                                                                             \
  HE_ROWS(SoftmaxBackwardOp<T, T>)                                                                            \
  HE_ROWS(DiagQOp<T, T>)                                                                                      \
  HE_ROWS(DiagBackwardSumsOp<T, T>)                                                                           \
  HE_ROWS(DiagBackwardMapOp<T, T>)                                                                            \
  HE_ROWS(ProbTileOp<T, T>)                                                                                   \
  HE_ROWS(InnerDpOp<T, T>)                                                                                    \
  HE_ELEMENTS(InnerPairOp<T>)                                                                                 \
  HE_ELEMENTS(InnerPairBackwardOp<T>)                                                                         \
  HE_ROWS(TraceRowOp<T, T>)                                                                                   \
  HE_ROWS(RowSqNormOp<T, T>)                                                                                  \
  HE_ROWS(TraceBackwardOp<T, T>)                                                                              \
  HE_ROWS(HutchinsonVarOp<T, T>)                                                                              \
  HE_ROWS(HutchinsonTraceBackwardOp<T, T>)                                                                    \
  HE_ELEMENTS(RademacherFillOp<T, 1>)                                                                         \
  HE_ELEMENTS(ProbeDiagAccumulateOp<T, T, 1>)                                                                 \
  HE_ELEMENTS(ProbeUpstreamOp<T, T, 1>)                                                                       \
  HE_ELEMENTS(ClassMajorSOp<T, T, 1>)                                                                         \
  HE_ELEMENTS(ProbeClassFoldOp<T, T, 1>)                                                                      \
  HE_ROWS(TargetsRowOp<T>)                                                                                    \
  HE_ROWS(LogitsHvpOp<T, T>)                                                                                  \
  HE_ROWS(LogitsHvpBackwardUOp<T, T>)                                                                         \
  HE_ROWS(LogitsHvpBackwardPOp<T, T>)                                                                         \
  template int launch_softmax_stats<T, T>(const T*, index_t, index_t, T*, T*, bool, T*, cudaStream_t);       \
  template int launch_segment_sum<T>(const T*, const DomainOffsets&, T*, cudaStream_t);                       \
  template int launch_ce_coeffs<T>(const CeParams<T>&, const DomainOffsets&, T*, T*, T*, cudaStream_t);       \
  template int launch_domain_stats<T, T>(const CeParams<T>&, const DomainOffsets&, const T*, index_t, T*, T*, T*, T*, \
                                         T*, cudaStream_t);

HE_INSTANTIATE(float)
HE_INSTANTIATE(double)
HE_ELEMENTS(ProbeKeysOp)

}  // namespace hessalign
