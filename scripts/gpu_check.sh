#!/usr/bin/env bash
# The GPU check, run from the repository root on the GPU machine (torch preinstalled, no
# network). In order, each step bounded so the whole fits the device lease:
#   1. installs carried wheels from .whl/ (BackPACK, curvlinops: the benchmark peers) if any;
#   2. builds the extension in place against the installed torch, for this GPU's arch;
#   3. runs every CUDA test (pytest -m cuda: CUDA == CPU for every op, dtype, loss option and
#      class tile, same probes per seed, fp16/bf16 bounds, opcheck and torch.compile on CUDA);
#   4. profiles the launches of every op and step at a DomainBed head (profile.md:
#      kernels, copies and syncs per call; device, event and host time);
#   5. benchmarks, each within its own number of seconds: the bf16 large-head HVP and the
#      fusion across domains (with the padded GEMM width, its default there), the same HVP in
#      the plain layout (HESSALIGN_ALIGN_ROWS=0), the HGP step at the 16 DomainBed heads, every
#      op at as many DomainBed heads as fit, the Hutchinson steps, the fusion across E = 1..32
#      domains of 32 rows (the scaling-E series), the fp32 large head (the other scaling series:
#      run.py --only-tags scaling-C,scaling-N,scaling-K on a longer lease).
# Results go to $OUT (device tool) or benchmarks/results/gpu_<date>/ (at most 8 files, so the
# device tool returns them all; plots are rebuilt from the JSON with run.py --report):
#   gpu_check.md (device, versions, date, build time, test counts), cuda_tests.log, profile.md,
#   benchmark.log (each run's markdown at its end), bench_json.tar (each benchmark run's JSON;
#   build.log only when the build fails).
# Usage: [DEADLINE_S=540] [PHASES=...] [HEADS=...] bash scripts/gpu_check.sh
#   DEADLINE_S: seconds for the whole script. PHASES: a comma list of the steps after the build
#   (tests,profile,bf16,align,hgp,ops,hutchinson,fusion,large; default all), so a short lease can
#   run what an earlier one did not reach. HEADS: a comma list of DomainBed head ids (E5xn32_d2048_C65, ...)
#   for the hgp, ops and hutchinson phases (default all 16, in plan order, as far as time allows).
#   OPS_S, HUTCHINSON_S, FUSION_S: the seconds of the ops, Hutchinson-step and fusion phases
#   (default 140, 60 and 60), for a lease that skips other phases. PROVIDERS: a comma list of
#   the peers the ops and Hutchinson-step phases time besides ours (closed_form,autograd: the
#   targets' only; default every peer).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
DEADLINE_S=${DEADLINE_S:-3600}
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
PY=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/results/gpu_$(date +%Y-%m-%d)}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the in-place build, for benchmarks/run.py
SUMMARY="$RESULTS/gpu_check.md"
PHASES=${PHASES:-tests,profile,bf16,align,hgp,ops,hutchinson,fusion,large}
want() { [[ ",$PHASES," == *",$1,"* ]]; }
HEADS_ARG=()
[ -n "${HEADS:-}" ] && HEADS_ARG=(--only-shapes "$HEADS")
PROV_ARG=()
[ -n "${PROVIDERS:-}" ] && PROV_ARG=(--providers "$PROVIDERS")

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
arch=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- csrc hessalign_ext tests benchmarks 2>/dev/null || echo ' + uncommitted changes')"
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
  echo "- torch: $($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
  echo "- nvcc: $($CUDA_HOME/bin/nvcc --version | tail -2 | head -1)"
  echo "- python: $($PY --version 2>&1); peers: $($PY -c 'import backpack, curvlinops; import importlib.metadata as m; print("backpack", m.version("backpack-for-pytorch"), "curvlinops", m.version("curvlinops-for-pytorch"))' 2>&1 | tail -1)"
  echo "- TORCH_CUDA_ARCH_LIST: $TORCH_CUDA_ARCH_LIST"
  echo "- phases: $PHASES${HEADS:+; heads: $HEADS}${PROVIDERS:+; providers: $PROVIDERS}"
} > "$SUMMARY"

start=$(date +%s)
if ! MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace > /tmp/build.log 2>&1; then
  cp /tmp/build.log "$RESULTS/build.log"
  echo "- build: FAILED (build.log)" >> "$SUMMARY"; tail -60 /tmp/build.log; cat "$SUMMARY"; exit 1
fi
echo "- build: $(( $(date +%s) - start )) s" >> "$SUMMARY"

# pytest-xdist spreads the tests over the CPU cores (the CPU side of each comparison dominates).
workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
tests_rc=0
if want tests; then
start=$(date +%s)
timeout $(( $(left) / 3 )) $PY -m pytest -q -m cuda -p no:cacheprovider -rfEs $workers --timeout 120 \
  tests/test_cuda.py tests/test_domain_losses.py tests/test_head_*.py tests/test_hutchinson_*.py tests/test_loss_rows.py tests/test_logits_hvp.py \
  > "$RESULTS/cuda_tests.log" 2>&1
tests_rc=$?
tail -30 "$RESULTS/cuda_tests.log"
echo "- CUDA tests (pytest -m cuda $workers): $(tail -1 "$RESULTS/cuda_tests.log") [exit $tests_rc, $(( $(date +%s) - start )) s]" >> "$SUMMARY"
fi

if want profile; then
start=$(date +%s)
timeout 60 $PY benchmarks/profile_launches.py --device cuda --calls 50 --out "$RESULTS/profile.md" \
  --shape 3,32,512,7 > /tmp/profile.log 2>&1
echo "- launch profile (benchmarks/profile_launches.py, profile.md): exit $?, $(( $(date +%s) - start )) s" >> "$SUMMARY"
fi

# bench SECONDS ARGS: one benchmark run of at most SECONDS (less if the deadline is nearer); it
# starts no new job once its budget is spent, and its budget leaves 30 s for the job in flight.
# Its JSON goes into bench_json.tar and its markdown only into benchmark.log (it is rebuilt
# from the JSON by run.py --report): $OUT returns at most 8 files.
bench() {
  local seconds=$1; shift
  local budget=$(( ($(left) < seconds ? $(left) : seconds) - 30 ))
  [ "$budget" -gt 5 ] || { echo "- benchmark $*: not run (no time left)" >> "$SUMMARY"; return 0; }
  start=$(date +%s)
  timeout $(( budget + 30 )) $PY benchmarks/run.py --device cuda --no-plots --out "$RESULTS" --budget-s "$budget" "$@" \
    >> "$RESULTS/benchmark.log" 2>&1
  local rc=$?
  find "$RESULTS" -maxdepth 1 -name '20*.md' -exec mv {} /tmp/ \;
  (cd "$RESULTS" && for j in 20*.json; do
    [ -e "$j" ] && tar rf bench_json.tar --transform "s/^/${AB:-}/" "$j" && rm "$j"
  done)
  echo "- benchmark \`${AB:+HESSALIGN_ALIGN_ROWS=${HESSALIGN_ALIGN_ROWS:-} }run.py --device cuda $*\` (budget ${budget} s): exit $rc, $(( $(date +%s) - start )) s" >> "$SUMMARY"
  [ "$rc" -eq 0 ] || bench_rc=$rc
}
bench_rc=0
OPS=domain_losses,head_grad,head_hvp,head_hessian_diag,head_hessian_trace,head_hessian_inner,hutchinson_diag,hutchinson_trace
# Seconds per phase, from the H100 run of 2026-11-26 (about 150 s go to build, tests and profile):
# 1. the bf16 large-head HVP against its GEMMs and the fusion across domains (~20 s)
want bf16 && bench 60 --quick --dtype bfloat16
# 2. A/B: the same HVP in the plain layout, without the padded GEMM width (head_problem.h); JSON kept as plain_*.json
want align && AB=plain_ HESSALIGN_ALIGN_ROWS=0 bench 45 --quick --dtype bfloat16 --only head_hvp --only-tags large
# 3. the HGP step at the 16 DomainBed heads, every form (~55 s)
want hgp && bench 75 --only-tags domainbed --only hgp_step --dtype float32 "${HEADS_ARG[@]}"
# 4. every op at as many DomainBed heads as fit (~25 s a head)
want ops && bench "${OPS_S:-140}" --only-tags domainbed --dtype float32 --only $OPS --rounds 3 --burst 0.04 "${HEADS_ARG[@]}" "${PROV_ARG[@]}"
# 5. the Hutchinson steps (the autograd reference with 300 probes takes seconds per call), then the fp32 large head
want hutchinson && bench "${HUTCHINSON_S:-60}" --only-tags domainbed --only hutchinson_step,hutchinson_exact_step --dtype float32 --rounds 3 "${HEADS_ARG[@]}" "${PROV_ARG[@]}"
# 6. the fusion target at DomainBed rows: E domains of 32 rows against one domain of 32·E rows
want fusion && bench "${FUSION_S:-60}" --only-tags scaling-E --dtype float32 --rounds 3
want large && bench 3600 --quick --only-tags large --dtype float32
grep -A14 "^## Targets" "$RESULTS/benchmark.log" | head -60
cat "$SUMMARY"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
