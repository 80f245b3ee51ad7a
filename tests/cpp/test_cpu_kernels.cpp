// ctest: the CPU kernels (host drivers of csrc/host/ with cpu/cpu_kernels.h) against naive
// loops over rows and classes, in float64 on random inputs, three unequal domains (one of a
// single row), C and d off every tile, all classes at once and streamed over class tiles.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../csrc/cpu/cpu_kernels.h"
#include "../../csrc/host/domain_losses.h"
#include "../../csrc/host/head_hessian_diag.h"
#include "../../csrc/host/head_hessian_trace.h"
#include "../../csrc/host/gemm.h"

using hessalign::CpuKernels;

namespace {

int failures = 0;

void expect_close(const char* what, const at::Tensor& got, const at::Tensor& want) {
  const double err = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  const bool ok = err <= 1e-12 * std::max(1.0, scale);
  std::printf("%-40s max abs error %.3e (scale %.3e) %s\n", what, err, scale, ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

struct Problem {
  at::Tensor z, w, b, labels, offsets;
  std::vector<int64_t> off;
};

Problem make_problem() {
  at::manual_seed(7);
  const std::vector<int64_t> sizes = {9, 1, 14};
  const int64_t C = 37, d = 13;
  Problem p;
  p.off = {0};
  for (int64_t s : sizes) p.off.push_back(p.off.back() + s);
  const int64_t N = p.off.back();
  const auto f64 = at::kDouble;
  p.z = at::randn({N, d}, f64);
  p.w = at::randn({C, d}, f64) / std::sqrt(double(d));
  p.b = at::randn({C}, f64);
  p.labels = at::randint(0, C, {N}, at::kLong);
  p.offsets = at::tensor(p.off, at::kLong);
  return p;
}

// Naive: per row, softmax by loops; per domain, mean over its rows.
void naive(const Problem& p, at::Tensor& loss, at::Tensor& diag, at::Tensor& trace) {
  const int64_t N = p.z.size(0), d = p.z.size(1), C = p.w.size(0), E = int64_t(p.off.size()) - 1;
  auto z = p.z.accessor<double, 2>();
  auto w = p.w.accessor<double, 2>();
  auto b = p.b.accessor<double, 1>();
  auto y = p.labels.accessor<int64_t, 1>();
  loss = at::zeros({E}, at::kDouble);
  diag = at::zeros({E, C, d + 1}, at::kDouble);
  trace = at::zeros({E}, at::kDouble);
  auto L = loss.accessor<double, 1>();
  auto D = diag.accessor<double, 3>();
  auto T = trace.accessor<double, 1>();
  for (int64_t e = 0; e < E; ++e) {
    const double n = double(p.off[e + 1] - p.off[e]);
    for (int64_t i = p.off[e]; i < p.off[e + 1]; ++i) {
      std::vector<double> logit(C), prob(C);
      double mx = -INFINITY, s = 0;
      for (int64_t c = 0; c < C; ++c) {
        logit[c] = b[c];
        for (int64_t k = 0; k < d; ++k) logit[c] += z[i][k] * w[c][k];
        mx = std::max(mx, logit[c]);
      }
      for (int64_t c = 0; c < C; ++c) s += std::exp(logit[c] - mx);
      const double lse = mx + std::log(s);
      L[e] += (lse - logit[y[i]]) / n;
      for (int64_t c = 0; c < C; ++c) {
        prob[c] = std::exp(logit[c] - lse);
        const double h = prob[c] * (1 - prob[c]) / n;
        for (int64_t k = 0; k <= d; ++k) {
          const double zk = k < d ? z[i][k] : 1.0;
          D[e][c][k] += h * zk * zk;
          T[e] += h * zk * zk;
        }
      }
    }
  }
}

// The few-rows kernel (cpu/segment_tn_cpu.cpp) against float64 products, domain by domain:
// classes off its 4-class tiles and 16-class chunks, with Y's panels read in place and packed
// (from 48 classes), columns off its 24-column panels and 8-wide vectors, domains of 0 to 64 rows
// (and a call with no rows at all), every operand a view with a row stride past its width; the
// output's padding column and the elements after it must keep their sentinel (a tail that writes
// too far fails).
void check_segment_tn() {
  at::manual_seed(11);
  int bad = 0;
  for (const std::vector<int64_t>& sizes : {std::vector<int64_t>{9, 0, 64, 1, 33}, std::vector<int64_t>{0, 0}})
    for (int64_t M : {1, 2, 3, 4, 7, 16, 37, 53})
      for (int64_t W : {1, 7, 8, 23, 24, 25, 53, 129}) {
        std::vector<int64_t> off = {0};
        for (int64_t s : sizes) off.push_back(off.back() + s);
        const int64_t N = off.back(), E = int64_t(sizes.size());
        const at::Tensor X = at::randn({N, M + 3}).narrow(1, 1, M);
        const at::Tensor Y = at::randn({N, W + 5}).narrow(1, 2, W);
        const float sentinel = 7.0f;
        const at::Tensor buf = at::full({E * M * (W + 1) + 16}, sentinel);
        at::Tensor out = buf.narrow(0, 0, E * M * (W + 1)).view({E, M, W + 1}).narrow(2, 0, W);
        hessalign::segment_tn(X, Y, off, out);
        double err = 0, scale = 0;
        for (int64_t e = 0; e < E; ++e) {
          const at::Tensor want = at::mm(X.narrow(0, off[e], sizes[e]).t().to(at::kDouble),
                                         Y.narrow(0, off[e], sizes[e]).to(at::kDouble));
          err = std::max(err, (out[e].to(at::kDouble) - want).abs().max().item<double>());
          scale = std::max(scale, want.abs().max().item<double>());
        }
        const at::Tensor pad = buf.narrow(0, 0, E * M * (W + 1)).view({E, M, W + 1}).select(2, W);
        const bool kept = (pad == sentinel).all().item<bool>() && (buf.narrow(0, E * M * (W + 1), 16) == sentinel).all().item<bool>();
        if (err > 1e-5 * std::max(1.0, scale) || !kept) {
          std::printf("segment_tn N=%ld M=%ld W=%ld: max abs error %.3e (scale %.3e)%s FAIL\n", long(N), long(M),
                      long(W), err, scale, kept ? "" : ", wrote past a row");
          ++bad;
        }
      }
  failures += bad;
  std::printf("%-40s %s\n", "segment_tn (float32, 128 sizes)", bad ? "FAIL" : "ok");
}

// The few-classes kernel (cpu/few_classes_nt_cpu.cpp) against float64 products: classes off its
// 3-class tiles (1 to 32), rows off its 4-row blocks (0 to 33), K off the 8-wide vectors (0 to
// 513), 2-D and batched (3 products), without a bias, with one (a strided view) and, batched,
// with one per product; a and bᵀ views with a row stride past their width, out's rows padded:
// the padding and 16 elements after out must keep their sentinel.
void check_few_classes_nt() {
  at::manual_seed(12);
  int bad = 0, cases = 0;
  for (const int64_t P : {0, 3})  // 0: 2-D operands
    for (int64_t C : {1, 2, 3, 4, 7, 16, 31, 32})
      for (int64_t N : {0, 1, 4, 5, 33})
        for (int64_t K : {0, 1, 9, 64, 513})
          for (const int bias_rows : {0, 1, 3}) {  // 3: one bias per product
            if (bias_rows == 3 && !P) continue;
            const int64_t B = P ? P : 1;
            const at::Tensor a = at::randn({B, N, K + 3}).narrow(2, 1, K);
            const at::Tensor bt = at::randn({B, C, K + 5}).narrow(2, 2, K);  // b = btᵀ: a row-major block
            const at::Tensor bias = bias_rows == 3 ? at::randn({B, C + 2}).narrow(1, 1, C)  // rows C + 2 apart
                                                   : at::randn({2 * C}).slice(0, 0, 2 * C, 2);  // stride 2
            const float sentinel = 7.0f;
            const at::Tensor buf = at::full({B * N * (C + 1) + 16}, sentinel);
            at::Tensor out = buf.narrow(0, 0, B * N * (C + 1)).view({B, N, C + 1}).narrow(2, 0, C);
            const at::Tensor b = bt.transpose(1, 2);
            const at::Tensor* bias_arg = bias_rows ? &bias : nullptr;
            if (P) hessalign::few_classes_nt(out, a, b, bias_arg);
            else hessalign::few_classes_nt(out[0], a[0], b[0], bias_arg);
            at::Tensor want = at::bmm(a.to(at::kDouble), b.to(at::kDouble));
            if (bias_rows) want = want + (bias_rows == 3 ? bias.unsqueeze(1) : bias).to(at::kDouble);
            const double err = N ? (out.to(at::kDouble) - want).abs().max().item<double>() : 0.0;
            const double scale = N ? want.abs().max().item<double>() : 0.0;
            const at::Tensor pad = buf.narrow(0, 0, B * N * (C + 1)).view({B, N, C + 1}).select(2, C);
            const bool kept = (pad == sentinel).all().item<bool>() &&
                              (buf.narrow(0, B * N * (C + 1), 16) == sentinel).all().item<bool>();
            ++cases;
            if (err > 1e-5 * std::max(1.0, scale) || !kept) {
              std::printf("few_classes_nt P=%ld C=%ld N=%ld K=%ld bias rows=%d: max abs error %.3e (scale %.3e)%s FAIL\n",
                          long(P), long(C), long(N), long(K), bias_rows, err, scale,
                          kept ? "" : ", wrote past a row");
              ++bad;
            }
          }
  failures += bad;
  char what[64];
  std::snprintf(what, sizeof what, "few_classes_nt (float32, %d cases)", cases);
  std::printf("%-40s %s\n", what, bad ? "FAIL" : "ok");
}

// host/gemm.h's run_gemm on each way that applies here (ATen; oneDNN where it runs; the
// few-classes kernel, which writes and takes no accumulation) against float64 products: 2-D and
// batched, plain, accumulating into random values, with a bias (C,) and, batched, one per
// product; a is contiguous and b the transpose of a row-major block, a layout every way reads.
void check_run_gemm() {
  using hessalign::GemmWay;
  at::manual_seed(13);
  std::vector<std::pair<GemmWay, const char*>> ways = {{GemmWay::kAten, "aten"}};
  if (hessalign::onednn_usable()) ways.push_back({GemmWay::kOneDnn, "onednn"});
#if defined(CPU_CAPABILITY_AVX2)
  ways.push_back({GemmWay::kFewClasses, "few_classes"});
#endif
  const int64_t P = 3, N = 5, K = 33, C = 7;
  int bad = 0, cases = 0;
  for (const auto& [way, name] : ways)
    for (const bool batched : {false, true})
      for (const int variant : {0, 1, 2, 3}) {  // plain, accumulate, bias (C,), bias per product
        if ((variant == 1 && way == GemmWay::kFewClasses) || (variant == 3 && !batched)) continue;
        const at::Tensor a3 = at::randn({P, N, K}), b3 = at::randn({P, C, K}).transpose(1, 2);
        const at::Tensor start = at::randn({P, N, C});
        const at::Tensor bias = variant == 3 ? at::randn({P, C}) : at::randn({C});
        const at::Tensor a = batched ? a3 : a3[0], b = batched ? b3 : b3[0];
        at::Tensor out = (batched ? start : start[0]).clone();
        hessalign::run_gemm(way, out, a, b, variant >= 2 ? &bias : nullptr, variant == 1);
        at::Tensor want = at::matmul(a.to(at::kDouble), b.to(at::kDouble));
        if (variant == 1) want = want + (batched ? start : start[0]).to(at::kDouble);
        if (variant == 2) want = want + bias.to(at::kDouble);
        if (variant == 3) want = want + bias.unsqueeze(1).to(at::kDouble);
        const double err = (out.to(at::kDouble) - want).abs().max().item<double>();
        const double scale = want.abs().max().item<double>();
        ++cases;
        if (err > 1e-5 * std::max(1.0, scale)) {
          std::printf("run_gemm %s batched=%d variant=%d: max abs error %.3e (scale %.3e) FAIL\n", name, int(batched),
                      variant, err, scale);
          ++bad;
        }
      }
  failures += bad;
  char what[64];
  std::snprintf(what, sizeof what, "run_gemm (%zu ways, %d cases)", ways.size(), cases);
  std::printf("%-40s %s\n", what, bad ? "FAIL" : "ok");
}

}  // namespace

// The padded GEMM width's rule (host/padded_width.h): by default only for 16-bit features on CUDA
// at a head with at least 128 rows a domain and 2^30 multiply-adds per GEMM, and never where D is
// aligned; HESSALIGN_ALIGN_ROWS=1 and =0 decide alone.
void check_align_rows_rule() {
  struct Case { const char* what; const char* env; int64_t N, E, C, D, elem; bool cuda, want; };
  const int64_t d4097 = 4097, big_C = 32768;
  const Case cases[] = {
      {"bf16 large head on CUDA", nullptr, 8192, 4, big_C, d4097, 2, true, true},
      {"fp32 large head on CUDA", nullptr, 8192, 4, big_C, d4097, 4, true, false},
      {"bf16 large head on the CPU", nullptr, 8192, 4, big_C, d4097, 2, false, false},
      {"bf16, 127 rows a domain", nullptr, 4 * 127, 4, big_C, d4097, 2, true, false},
      {"bf16, 128 rows a domain", nullptr, 4 * 128, 4, big_C, d4097, 2, true, true},
      {"bf16, just under 2^30", nullptr, 1024, 1, 1023, 1025, 2, true, false},
      {"bf16, just over 2^30", nullptr, 1024, 1, 1024, 1025, 2, true, true},
      {"bf16 DomainBed head", nullptr, 96, 3, 345, 2049, 2, true, false},
      {"aligned D, forced on", "1", 8192, 4, big_C, 4104, 2, true, false},
      {"forced on: fp32 small head on the CPU", "1", 96, 3, 7, 513, 4, false, true},
      {"forced off: bf16 large head on CUDA", "0", 8192, 4, big_C, d4097, 2, true, false},
  };
  for (const Case& c : cases) {
    if (c.env) setenv("HESSALIGN_ALIGN_ROWS", c.env, 1);
    else unsetenv("HESSALIGN_ALIGN_ROWS");
    const bool got = hessalign::align_rows_for(c.N, c.E, c.C, c.D, c.elem, c.cuda);
    std::printf("%-40s align_rows %d %s\n", c.what, int(got), got == c.want ? "ok" : "FAIL");
    if (got != c.want) ++failures;
  }
  unsetenv("HESSALIGN_ALIGN_ROWS");
}

int main() {
  check_align_rows_rule();
  check_segment_tn();
  check_few_classes_nt();
  check_run_gemm();
  const Problem p = make_problem();
  at::Tensor loss, diag, trace;
  naive(p, loss, diag, trace);
  for (int64_t tile : {0, 5}) {  // 0: all classes at once; 5: streamed over 8 class tiles
    const std::string t = tile ? " (class_tile=5)" : "";
    expect_close(("domain_losses" + t).c_str(),
                 hessalign::domain_losses_forward<CpuKernels>(p.z, p.w, p.b, p.labels, p.offsets, -100, std::nullopt,
                                                              0.0, "mean", tile),
                 loss);
    expect_close(("head_hessian_diag" + t).c_str(),
                 hessalign::head_hessian_diag_forward<CpuKernels>(p.z, p.w, p.b, p.offsets, std::nullopt, -100,
                                                                  std::nullopt, 0.0, "mean", tile),
                 diag);
    expect_close(("head_hessian_trace" + t).c_str(),
                 hessalign::head_hessian_trace_forward<CpuKernels>(p.z, p.w, p.b, p.offsets, std::nullopt, -100,
                                                                   std::nullopt, 0.0, "mean", tile),
                 trace);
  }
  std::printf("%s\n", failures ? "FAILED" : "all passed");
  return failures ? 1 : 0;
}
