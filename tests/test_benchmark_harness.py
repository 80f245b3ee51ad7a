"""benchmarks/run.py end to end on a tiny head: the harness times every provider that applies,
checks them against the reference first, and writes the JSON and markdown it reports from."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import providers  # noqa: E402


class FakeClock:
    """timing.Clock whose calls return their own duration in seconds."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def sync(self):
        pass

    def once(self, fn):
        return fn()


def test_shape_ids_round_trip():
    shape = providers.Shape(5, 32, 2048, 345)
    assert providers.Shape.from_id(shape.id) == shape
    with pytest.raises(ValueError, match="E3xn32_d512_C65"):
        providers.Shape.from_id("E3x32_d512_C65")


def test_min_bytes_reads_each_input_and_writes_each_output_once():
    from plan import min_bytes

    s = providers.Shape(3, 32, 512, 7)  # N = 96, D = 513
    head = (96 * 512 + 7 * 512 + 7) * 4
    block = 3 * 7 * 513 * 4
    assert min_bytes(providers.Case("head_hvp"), s, 4) == head + 2 * block  # the vectors in, the HVPs out
    assert min_bytes(providers.Case("head_grad"), s, 4) == head + 8 * 96 + block  # int64 labels
    assert min_bytes(providers.Case("hutchinson_trace", 300), s, 4) == head + 3 * 4  # probes drawn inside
    assert min_bytes(providers.Case("head_hessian_inner"), s, 2) == head // 2 + 9 * 2
    assert min_bytes(providers.Case("hgp_step"), s, 4) == 2 * head + 8 * 96  # the gradients out


def test_run_at_chosen_heads(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--heads", "E2xn4_d8_C3,E3xn5_d6_C4",
           "--only", "head_grad,hgp_step", "--no-plots", "--no-memory", "--rounds", "1", "--burst", "0.005",
           "--threads", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    (json_path,) = tmp_path.glob("*_heads_head_grad_hgp_step.json")
    records = json.loads(json_path.read_text())["records"]
    timed = {(r["case"], r["provider"], r["E"]) for r in records if r.get("status") == "ok"}
    for E in (2, 3):
        for case, provider in [("head_grad", "ours"), ("head_grad", "closed_form"), ("head_grad", "autograd"),
                               ("hgp_step", "kernel"), ("hgp_step", "kernel_gram"), ("hgp_step", "kernel_fused"),
                               ("hgp_step", "autograd")]:
            assert (case, provider, E) in timed
    assert all(r["p50_ms"] > 0 and r["ratio_vs_ours"] > 0 for r in records if r.get("status") == "ok")
    for r in records:  # every timed case has its byte floor; the GEMM-shaped ones the roofline too
        if r.get("status") == "ok":
            assert r["bytes"] > 0 and r["copy_gbps"] > 0 and r["x_bytes"] > 0
            if r["case"] == "head_grad":
                assert r["bound"] in ("flops", "bytes")
                assert r["x_roofline"] == pytest.approx(min(r["x_floor"], r["x_bytes"]))
    md = json_path.with_suffix(".md").read_text()
    assert "## chosen heads, float32: time / ours" in md and "| 3×5, 6, 4 |" in md


def test_measure_skips_warm_up_after_the_check_and_takes_cuda_peaks_in_a_timed_call(monkeypatch):
    """A provider whose check call was slower than a burst is not called again to warm up; on
    CUDA each provider's peak memory comes from its first timed call, not from an extra one."""
    import timing

    calls = {"fast": 0, "slow": 0}
    allocated = [100]

    def make(name, seconds, peak):
        def fn():
            calls[name] += 1
            allocated.append(allocated[0] + peak)
            return seconds
        return fn

    monkeypatch.setattr(timing.torch.cuda, "reset_peak_memory_stats", lambda: allocated.__setitem__(slice(1, None), []))
    monkeypatch.setattr(timing.torch.cuda, "memory_allocated", lambda: allocated[0])
    monkeypatch.setattr(timing.torch.cuda, "max_memory_allocated", lambda: max(allocated))
    fns = {"fast": make("fast", 0.001, 7), "slow": make("slow", 0.015, 1000)}
    peaks = {}
    samples = timing.measure(FakeClock(cuda=True), fns, rounds=3, burst_s=0.01, warm={"fast": None, "slow": 0.02},
                             peaks=peaks)
    assert calls["slow"] == len(samples["slow"]) == 3  # one per round, no warm-up call
    assert calls["fast"] == len(samples["fast"]) + 3  # warmed up to the burst: three calls
    assert peaks == {"fast": 7, "slow": 1000}


def test_measure_times_a_far_slower_provider_in_one_round():
    """A provider 20x slower than the fastest and over 50 ms a call is timed once (its ratio is far
    from every target's line); one 10x slower keeps every round, and so does one whose first call
    (compilation, the check's) was slow but whose timed calls are fast."""
    import timing

    times = {"ours": [0.01], "near": [0.1], "far": [0.5], "compiles": [0.02]}
    calls = dict.fromkeys(times, 0)

    def make(name):
        def fn():
            calls[name] += 1
            return times[name][0]
        return fn

    fns = {name: make(name) for name in times}
    warm = {"ours": 0.01, "near": 0.1, "far": 0.5, "compiles": 5.0}
    samples = timing.measure(FakeClock(cuda=False), fns, rounds=5, burst_s=0.01, warm=warm)
    assert {name: len(xs) for name, xs in samples.items()} == {"ours": 5, "near": 5, "far": 1, "compiles": 5}
    assert calls == {"ours": 5, "near": 5, "far": 1, "compiles": 5}  # the check's call was the warm-up


def test_run_with_chosen_providers(tmp_path):
    """--providers keeps those and the ratios' denominator (ours; a step's kernel); each record
    says where its job's seconds went."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--heads", "E2xn4_d8_C3", "--only",
           "head_hvp,hgp_step", "--providers", "autograd", "--no-plots", "--no-memory", "--rounds", "1",
           "--burst", "0.005", "--threads", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    records = json.loads(next(tmp_path.glob("*.json")).read_text())["records"]
    assert {(r["case"], r["provider"]) for r in records} == {
        ("head_hvp", "ours"), ("head_hvp", "autograd"), ("hgp_step", "kernel"), ("hgp_step", "autograd")}
    for r in records:
        assert r["status"] == "ok" and r["check"]["wall_s"] > 0
        assert r["job"]["wall_s"] >= r["job"]["checks_s"] + r["job"]["timing_s"] > 0
    bad = subprocess.run(cmd[:-2] + ["--providers", "autograd,nope", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "--providers: no provider nope" in bad.stderr


@pytest.mark.parametrize("case", [providers.Case(op) for op in providers.OPS if not op.startswith("hutchinson")] +
                         [providers.Case(op, K) for op in ("hutchinson_diag", "hutchinson_trace") for K in (1, 7)],
                         ids=lambda c: c.label)
def test_batched_closed_form_matches_the_reference(case, monkeypatch):
    """closed_form_batched (every domain in the same torch calls) against the float64 reference,
    with the op's probes (two at a time: the chunks' sum), to float64 rounding."""
    import torch

    monkeypatch.setattr(providers.problems, "PROBE_CHUNK_ELEMS", 2 * 4 * 7)
    problem = providers.make_problem(providers.Shape(3, 5, 6, 4), "cpu", torch.float64)
    status, err, tol, _, _ = providers.check(providers.PROVIDERS["closed_form_batched"], problem, case)
    assert status == "ok" and err <= 1e-12, (err, tol)
