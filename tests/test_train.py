"""hessalign_ext.train / sweep / report / cli: resumable runs, DomainBed records, tables, plots."""

from __future__ import annotations

import json

import pytest
import torch

from hessalign_ext import _C, cli, report, sweep, train
from hessalign_ext.algorithms import Hutchinson
from single_thread import one_torch_thread  # noqa: F401  (autouse fixture)

SMALL = {"n_per_domain": 150}
HPARAMS = {"mlp_width": 16, "num_probes": 4, "penalty_anneal_iters": 2}


def run_args(tmp_path, name="run", algorithm="Hutchinson", **kw):
    kw = {"steps": 6, "checkpoint_freq": 2, "hparams": HPARAMS, "dataset_kwargs": SMALL, "progress": False, **kw}
    return train.RunArgs(algorithm=algorithm, dataset="ColoredDigits", test_envs=[2],
                         output_dir=str(tmp_path / name), **kw)


def records(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def comparable(record):
    """A record without what legitimately differs between two runs (timing, folder)."""
    return {k: v for k, v in record.items() if k not in ("step_time", "mem_gb", "args")}


def test_run_writes_domainbed_records_and_checkpoints(tmp_path):
    out = train.train(run_args(tmp_path))
    rs = records(out)
    assert [r["step"] for r in rs] == [0, 2, 4, 5]
    for r in rs:
        for env in range(3):
            assert 0.0 <= r[f"env{env}_in_acc"] <= 1.0 and 0.0 <= r[f"env{env}_out_acc"] <= 1.0
        for key in ("epoch", "loss", "nll", "penalty_hessian", "penalty_gradient", "mem_gb", "step_time",
                    "hessian_gap_env0_env1"):
            assert key in r, key
        assert r["hparams"]["num_probes"] == 4 and r["hparams"]["lr"] > 0
        assert r["args"]["test_envs"] == [2] and r["args"]["trial_seed"] == 0
        assert r["args"]["algorithm"] == "Hutchinson" and r["args"]["dataset"] == "ColoredDigits"
    assert rs[-1]["hessian_gap_env0_env1"] > 0
    assert (out / "checkpoint.pt").exists() and (out / "done").exists()


def test_run_sets_reproducible_kernels_and_restores_them(tmp_path, monkeypatch):
    """While a run trains, cuDNN is deterministic and the CPU GEMMs take their untimed ways (a resumed
    run must match the uninterrupted one); the settings before the run come back after it, also
    when it fails."""
    cudnn = torch.backends.cudnn
    seen, update = [], Hutchinson.update

    def recording_update(self, minibatches):
        seen.append((cudnn.deterministic, cudnn.benchmark, _C.set_cpu_gemm_timing(False)))
        return update(self, minibatches)

    def failing_update(self, minibatches):
        raise RuntimeError("a step failed")

    before = cudnn.deterministic, cudnn.benchmark
    try:
        cudnn.deterministic, cudnn.benchmark = False, True
        _C.set_cpu_gemm_timing(True)
        monkeypatch.setattr(Hutchinson, "update", recording_update)
        train.train(run_args(tmp_path))
        assert len(seen) == 6 and set(seen) == {(True, False, False)}
        assert (cudnn.deterministic, cudnn.benchmark, _C.set_cpu_gemm_timing(True)) == (False, True, True)
        monkeypatch.setattr(Hutchinson, "update", failing_update)
        with pytest.raises(RuntimeError, match="a step failed"):
            train.train(run_args(tmp_path, name="failed"))
        assert (cudnn.deterministic, cudnn.benchmark, _C.set_cpu_gemm_timing(True)) == (False, True, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = before


def test_finished_run_is_not_redone(tmp_path, capsys):
    out = train.train(run_args(tmp_path))
    before = (out / "results.jsonl").read_text()
    train.train(run_args(tmp_path))
    assert "done already" in capsys.readouterr().out
    assert (out / "results.jsonl").read_text() == before


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    """Crash at step 3 (after the step-2 checkpoint); the rerun continues from step 3 and ends
    exactly where an uninterrupted run ends (Hutchinson draws probe seeds from torch's RNG,
    so this also checks that the generators are restored)."""
    whole = records(train.train(run_args(tmp_path, "whole")))

    class Crash(Exception):
        pass

    update = Hutchinson.update
    calls = []

    def counted(crash_at=None):
        def wrapped(self, minibatches, unlabeled=None):
            calls.append(1)
            if len(calls) == crash_at:
                raise Crash
            return update(self, minibatches, unlabeled)
        return wrapped

    monkeypatch.setattr(Hutchinson, "update", counted(crash_at=4))
    with pytest.raises(Crash):
        train.train(run_args(tmp_path, "resumed"))
    assert [r["step"] for r in records(tmp_path / "resumed")] == [0, 2]
    calls.clear()
    monkeypatch.setattr(Hutchinson, "update", counted())
    resumed = records(train.train(run_args(tmp_path, "resumed")))
    assert len(calls) == 3  # steps 3, 4, 5 only
    assert [comparable(r) for r in resumed] == [comparable(r) for r in whole]


def test_sweep_is_resumable(tmp_path, capsys):
    kw = dict(steps=3, checkpoint_freq=2, hparams=HPARAMS, dataset_kwargs=SMALL, progress=False)
    runs = sweep.sweep(["ERM", "HGP"], ["ColoredDigits"], tmp_path, test_envs=[2], n_trials=2, **kw)
    assert len(runs) == 4 and all(train.is_done(r.output_dir) for r in runs)
    assert len({r.seed for r in runs}) == 4
    assert "4 to run" in capsys.readouterr().out

    # one run loses its last records and its done mark, as if it had been killed
    victim = tmp_path / "ColoredDigits" / "HGP" / "te2_h0_t1"
    (victim / "done").unlink()
    untouched = (tmp_path / "ColoredDigits" / "ERM" / "te2_h0_t0" / "results.jsonl").stat().st_mtime_ns
    sweep.sweep(["ERM", "HGP"], ["ColoredDigits"], tmp_path, test_envs=[2], n_trials=2, **kw)
    assert "3 done, 1 to run" in capsys.readouterr().out
    assert train.is_done(victim)
    assert (tmp_path / "ColoredDigits" / "ERM" / "te2_h0_t0" / "results.jsonl").stat().st_mtime_ns == untouched


def test_report_writes_tables_and_plots(tmp_path, capsys):
    kw = dict(steps=3, checkpoint_freq=1, hparams=HPARAMS, dataset_kwargs=SMALL, progress=False)
    sweep.sweep(["ERM", "HGP"], ["ColoredDigits"], tmp_path / "runs", test_envs=[2], n_trials=2, **kw)
    cli.main(["report", "--input-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    text = (tmp_path / "report" / "tables.md").read_text()
    assert "training-domain validation" in text and "oracle" in text and text in printed
    assert "| ERM |" in text and "| HGP |" in text and "over 2 trial seeds" in text
    for name in ("accuracy", "penalty", "hessian_gap"):
        png = tmp_path / "report" / f"{name}_ColoredDigits_te2.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def _record(step, trial, accs, hparams_seed=0):
    """A results line for 3 environments, test env 2: accs = (in0, out0, in1, out1, in2, out2)."""
    r = {"step": step, "args": {"dataset": "ColoredDigits", "algorithm": "ERM", "test_envs": [2],
                                "hparams_seed": hparams_seed, "trial_seed": trial}}
    for env in range(3):
        r[f"env{env}_in_acc"], r[f"env{env}_out_acc"] = accs[2 * env], accs[2 * env + 1]
    return r


def test_model_selection():
    recs = [
        # trial 0, hparams 0: best training-domain validation at step 1, last step 2
        _record(0, 0, (.5, .5, .5, .5, .1, .1)),
        _record(1, 0, (.9, .9, .8, .8, .2, .3)),
        _record(2, 0, (.7, .6, .7, .6, .6, .5)),
        # trial 0, hparams 1: worse on validation, better oracle (test out at last step)
        _record(0, 0, (.6, .6, .6, .6, .7, .7), hparams_seed=1),
        _record(1, 0, (.6, .6, .6, .6, .8, .9), hparams_seed=1),
    ]
    key = ("ColoredDigits", "ERM", (2,))
    assert report.select(recs, "training-domain validation")[key] == [(pytest.approx(.2), pytest.approx(.85))]
    assert report.select(recs, "oracle")[key] == [(pytest.approx(.8), pytest.approx(.6))]


def test_cli_train(tmp_path):
    cli.main(["train", "--algorithm", "ERM", "--test-env", "2", "--output-dir", str(tmp_path / "cli"),
              "--steps", "2", "--checkpoint-freq", "1", "--hparams", json.dumps(HPARAMS),
              "--dataset-kwargs", json.dumps(SMALL), "--no-progress"])
    assert [r["step"] for r in records(tmp_path / "cli")] == [0, 1]
