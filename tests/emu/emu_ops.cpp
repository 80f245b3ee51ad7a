// The hessalign_emu operator library: every hessalign_ext op, run by the same host drivers
// (csrc/host/) with the CUDA backend whose kernels execute under CPU emulation
// (emu_kernels.cpp) on CPU tensors. cuBLAS is not emulated: the GEMMs run as the CPU ops'
// do (host/gemm.h), and are covered on a real GPU only (scripts/gpu_check.sh).
#include <torch/library.h>

#include "../../csrc/cuda/cuda_kernels.h"
#include "../../csrc/host/domain_losses.h"
#include "../../csrc/host/head_grad.h"
#include "../../csrc/host/hgp_fused.h"
#include "../../csrc/host/head_hessian_diag.h"
#include "../../csrc/host/head_hessian_inner.h"
#include "../../csrc/host/head_hessian_trace.h"
#include "../../csrc/host/head_hvp.h"
#include "../../csrc/host/hutchinson_diag.h"
#include "../../csrc/host/hutchinson_trace.h"
#include "../../csrc/host/logits_hvp.h"
#include "../../csrc/host/loss_rows.h"
#include "../../csrc/schemas.h"

namespace hessalign {
// float16/bfloat16 too, as the GPU build (cuda_backend.cuh); the sanitizer build, which runs the
// float64 subset only (scripts/test.sh), takes float and double alone and compiles in less time.
#ifdef HE_EMU_FLOAT_ONLY
constexpr bool kEmuReducedPrecision = false;
#else
constexpr bool kEmuReducedPrecision = true;
#endif
struct EmuKernels : CudaKernelsT<kEmuReducedPrecision> {
  static int guard(const at::Tensor&) { return 0; }
  static EmuKernels current() { return {{nullptr}}; }
};
}  // namespace hessalign

TORCH_LIBRARY(hessalign_emu, m) { HE_DEFINE_SCHEMAS(m); }

#define HE_EMU_IMPL(op)                                                        \
  m.impl(#op, &hessalign::op##_forward<hessalign::EmuKernels>); \
  m.impl("_" #op "_backward", &hessalign::op##_backward<hessalign::EmuKernels>);

TORCH_LIBRARY_IMPL(hessalign_emu, CPU, m) {
  HE_EMU_IMPL(domain_losses)
  HE_EMU_IMPL(head_grad)
  HE_EMU_IMPL(hgp_fused)
  HE_EMU_IMPL(head_hvp)
  HE_EMU_IMPL(head_hessian_diag)
  HE_EMU_IMPL(head_hessian_inner)
  HE_EMU_IMPL(head_hessian_trace)
  HE_EMU_IMPL(hutchinson_diag)
  HE_EMU_IMPL(hutchinson_trace)
  m.impl("loss_rows", &hessalign::loss_rows<hessalign::EmuKernels>);
  m.impl("logits_hvp", &hessalign::logits_hvp<hessalign::EmuKernels>);
  m.impl("_logits_hvp_backward", &hessalign::logits_hvp_backward<hessalign::EmuKernels>);
}
