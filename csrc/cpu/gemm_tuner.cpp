// Auto mode's choice among the ways a CPU float32 product can run (host/gemm.h): each kind of
// product (its sizes, strides, accumulation, bias and the thread count) is timed on every way
// that applies the first time it is seen, into a scratch output, and takes the fastest from then
// on, for the life of the process.
//
// Why measured, not a rule: the fastest way depends on the CPU's vector units, the thread count
// and the shape, not monotonically in size. Measured 2026-11-28 on a 2-core AMD EPYC Zen 4 (which
// runs 512-bit operations as two 256-bit halves), two threads, torch 2.14.1: the logits GEMM
// 96 x 512 by 512 x C took on oneDNN 46 us at C = 64 and 93 us at C = 65 (MKL 38 and 49 us),
// while at C = 345 oneDNN ran the ops' GEMMs 0.91-1.80x as fast as MKL (median 1.27x over 24
// shapes: logits and per-domain products at 3 and 5 domains, d = 512 and 2048). The few-classes
// and few-rows kernels, which the Zen 5 rule this replaces never took on a CPU with oneDNN, made
// 15 of 16 (op, head) cells at C = 2 and 7 1.22-1.96x faster and one 0.96x. That rule (oneDNN
// from 2^20 multiply-adds) left domain_losses at C = 65 1.6x slower there than on MKL.
//
// A product's result depends on the way it took (their summation orders differ), so it is the
// same bits at every call of one process, not across processes. Where runs must match across
// processes (the trainer's resume, like its cudnn.benchmark = False), set_cpu_gemm_timing(false)
// makes every choice the untimed one, which depends on the CPU, the build and the product only;
// HESSALIGN_CPU_GEMM=aten, onednn or own fixes the way too.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <limits>
#include <map>
#include <mutex>

#include "../host/gemm.h"

namespace hessalign {
namespace gemm_tuner {  // named: the unity build puts every CPU file in one translation unit
namespace {

// Products of more multiply-adds are not timed (a few runs of one take seconds on the CPU): they
// take the caller's preferred way, the one that is fastest at large sizes.
constexpr int64_t kMaxTimedMacs = int64_t(1) << 30;
constexpr int kRounds = 3;  // timed rounds of each way, interleaved, after one untimed run
// A round repeats a way for at least this long and takes the mean: one run of a small product
// (a few microseconds) is within a preemption of the machine's noise.
constexpr double kRoundSeconds = 100e-6;

enum Kind : int64_t { kGemm, kSegment };
// A key starts {kind, threads, timing}: timing is read once per call, into the key, which also keeps
// untimed choices apart from timed ones.
constexpr size_t kTimingInKey = 2;

std::atomic<bool> timing{true};  // set_cpu_gemm_timing

struct Way {
  const char* name;
  std::function<void(const at::Tensor&)> run;  // the product into the given output
};

struct Table {
  std::mutex mu;
  std::map<std::vector<int64_t>, GemmChoice> choices;
};

Table& table() {
  static Table t;
  return t;
}

void describe(std::vector<int64_t>& key, const at::Tensor& t) {
  key.push_back(t.dim());
  key.insert(key.end(), t.sizes().begin(), t.sizes().end());
  key.insert(key.end(), t.strides().begin(), t.strides().end());
}

// Seconds per run of a way over one round.
double seconds_of(const Way& way, const at::Tensor& out) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  int64_t runs = 0;
  double elapsed = 0;
  do {
    way.run(out);
    ++runs;
    elapsed = std::chrono::duration<double>(clock::now() - t0).count();
  } while (elapsed < kRoundSeconds);
  return elapsed / double(runs);
}

// The index of the way this kind of product takes, timed at its first call where there is a
// choice and timing is on (a product with one way is recorded too: cpu_gemm_choices lists every
// product of auto mode). make_ways() lists the ways, built only then: a known product's call costs a lookup. The
// first run of each way is untimed: it builds oneDNN's primitive and makes the choices of any
// product inside the way.
template <class MakeWays>
int64_t fastest(std::vector<int64_t> key, const at::Tensor& out, int64_t macs, int64_t preferred,
                const MakeWays& make_ways) {
  Table& t = table();
  {
    std::lock_guard<std::mutex> lock(t.mu);
    if (auto it = t.choices.find(key); it != t.choices.end()) {
      ++it->second.calls;
      return it->second.chosen;
    }
  }
  const std::vector<Way> ways = make_ways();
  const int64_t n = int64_t(ways.size());
  GemmChoice c{key, {}, std::vector<double>(n, std::numeric_limits<double>::quiet_NaN()), preferred, 0};
  for (const Way& w : ways) c.ways.push_back(w.name);
  if (n > 1 && macs <= kMaxTimedMacs && key[kTimingInKey]) {
    // zeros, not garbage: NaN or subnormal operands of an accumulation could slow a way down
    const at::Tensor scratch = at::empty_strided(out.sizes(), out.strides(), out.options()).zero_();
    for (const Way& w : ways) w.run(scratch);
    std::fill(c.seconds.begin(), c.seconds.end(), std::numeric_limits<double>::infinity());
    for (int r = 0; r < kRounds; ++r)
      for (int64_t i = 0; i < n; ++i) c.seconds[i] = std::min(c.seconds[i], seconds_of(ways[i], scratch));
    c.chosen = std::min_element(c.seconds.begin(), c.seconds.end()) - c.seconds.begin();
  }
  std::lock_guard<std::mutex> lock(t.mu);
  auto [it, inserted] = t.choices.emplace(std::move(key), std::move(c));  // another thread's, if first
  ++it->second.calls;
  return it->second.chosen;
}

}  // namespace
}  // namespace gemm_tuner

void run_gemm(GemmWay way, at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias,
              bool accumulate) {
  TORCH_INTERNAL_ASSERT(!(bias && accumulate), "run_gemm: a bias or an accumulation, not both");
  // a bias (C,) broadcast over every row, or (P, C) one row per product of a batch
  const auto bias_rows = [&] { return bias->dim() == 2 ? bias->unsqueeze(1) : *bias; };
  switch (way) {
    case GemmWay::kFewClasses:
      TORCH_INTERNAL_ASSERT(!accumulate, "run_gemm: the few-classes kernel writes its output, it does not add");
      return few_classes_nt(out, a, b, bias);
    case GemmWay::kOneDnn:
      if (bias) out.copy_(bias_rows().expand_as(out));
      return onednn_gemm(out, a, b, accumulate || bias);
    case GemmWay::kAten:
      break;
  }
  const bool batched = a.dim() == 3;
  if (bias) batched ? at::baddbmm_out(out, bias_rows(), a, b) : at::addmm_out(out, *bias, a, b);
  else if (accumulate) batched ? out.baddbmm_(a, b) : out.addmm_(a, b);
  else batched ? at::bmm_out(out, a, b) : at::mm_out(out, a, b);
}

GemmWay gemm_way(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias,
                 bool accumulate, bool with_onednn) {
  if (!a.is_cpu() || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat ||
      out.scalar_type() != at::kFloat || (bias && bias->scalar_type() != at::kFloat) || a.numel() == 0 ||
      b.numel() == 0)
    return GemmWay::kAten;
  switch (cpu_gemm_mode()) {
    case CpuGemm::kAten:
      return GemmWay::kAten;
    case CpuGemm::kOneDnn:
      return with_onednn ? GemmWay::kOneDnn : GemmWay::kAten;
    case CpuGemm::kOwn:
      return !accumulate && few_classes_applies(out, a, b) ? GemmWay::kFewClasses : GemmWay::kAten;
    case CpuGemm::kAuto:
      break;
  }
  // untimed (large, or timing off): oneDNN where it runs, the faster at large sizes on the CPUs measured, else
  // the few-classes kernel, else ATen: the last way listed
  std::vector<GemmWay> ways = {GemmWay::kAten};
  if (!accumulate && few_classes_applies(out, a, b)) ways.push_back(GemmWay::kFewClasses);
  if (with_onednn && onednn_usable() && onednn_layout(out, a, b)) ways.push_back(GemmWay::kOneDnn);

  using namespace gemm_tuner;
  std::vector<int64_t> key = {kGemm, at::get_num_threads(), timing, accumulate, bias ? bias->dim() : -1, with_onednn};
  describe(key, out);
  describe(key, a);
  describe(key, b);
  const auto named = [&] {
    std::vector<Way> all;
    for (GemmWay w : ways) {
      const char* name = w == GemmWay::kAten ? "aten" : w == GemmWay::kOneDnn ? "onednn" : "few_classes";
      all.push_back({name, [&, w](const at::Tensor& o) { run_gemm(w, o, a, b, bias, accumulate); }});
    }
    return all;
  };
  const int64_t macs = a.numel() * b.size(-1);
  return ways[fastest(std::move(key), out, macs, int64_t(ways.size()) - 1, named)];
}

bool segment_tn_faster(const at::Tensor& X, const at::Tensor& Y, const std::vector<int64_t>& off,
                       const at::Tensor& out, c10::function_ref<void(const at::Tensor&)> gemms) {
  if (cpu_gemm_mode() == CpuGemm::kOwn) return true;
  using namespace gemm_tuner;
  std::vector<int64_t> key = {kSegment, at::get_num_threads(), timing};
  describe(key, X);
  describe(key, Y);
  describe(key, out);
  key.insert(key.end(), off.begin(), off.end());
  const auto ways = [&] {
    return std::vector<Way>{{"gemms", gemms}, {"few_rows", [&](const at::Tensor& o) { segment_tn(X, Y, off, o); }}};
  };
  // untimed (large, or timing off): the GEMMs where oneDNN runs, else the kernel (faster than MKL on AVX2 CPUs)
  const int64_t macs = X.numel() * Y.size(1);
  return fastest(std::move(key), out, macs, onednn_usable() ? 0 : 1, ways) == 1;
}

bool set_cpu_gemm_timing(bool on) { return gemm_tuner::timing.exchange(on); }

std::vector<GemmChoice> cpu_gemm_choices() {
  auto& t = gemm_tuner::table();
  std::lock_guard<std::mutex> lock(t.mu);
  std::vector<GemmChoice> all;
  for (const auto& [key, choice] : t.choices) all.push_back(choice);
  return all;
}

void clear_cpu_gemm_choices() {
  auto& t = gemm_tuner::table();
  std::lock_guard<std::mutex> lock(t.mu);
  t.choices.clear();
}

}  // namespace hessalign
