"""Training hardening (issue 5, "Training"): crashes, kills, damaged files and bad input.

Faults injected, and what must come out:

- SIGKILL of ``hessalign train`` at random instants (3 kills, each after the incarnation has
  written at least one checkpoint) and of ``hessalign sweep`` in the middle of a run: the
  finished run / sweep equals an uninterrupted one bit for bit (every tensor of the final
  state, every results record but its wall-clock ``step_time``).
- Deterministic crash points in process: between a results line and its checkpoint, in the
  middle of a results line (torn line), in the middle of writing a checkpoint (half a
  temporary file), before the ``done`` mark: the resumed run equals an uninterrupted one.
- Damaged checkpoints (truncated, empty, garbage, one flipped byte, foreign format, missing
  keys, tensors of another model, another run's checkpoint) and results files (garbage line,
  JSON that is no record, missing file, lost records): refused with an error naming the file.
- Bad arguments and hparams: one line on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hessalign_ext import cli, report, runfiles, sweep, train
from hessalign_ext import hparams as hparams_registry
from hessalign_ext.algorithms import Hutchinson
from hessalign_ext.runfiles import ConfigError, CorruptFileError
from single_thread import one_torch_thread  # noqa: F401  (autouse fixture)

HESSALIGN = str(Path(sys.executable).with_name("hessalign"))
# one torch thread, as in this process: the runs compared bit for bit do the same arithmetic
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
SMALL = {"n_per_domain": 150}
HPARAMS = {"mlp_width": 16, "num_probes": 4, "penalty_anneal_iters": 2}
SHORT = {"steps": 8, "checkpoint_freq": 2}     # records and checkpoints after steps 0, 2, 4, 6, 7
LONG = {"steps": 400, "checkpoint_freq": 5}    # long enough for three kills mid-training (150 steps
#                                               ran in under a second, and a kill could land after the last step)


def run_args(folder, algorithm="Hutchinson", **kw):
    kw = {**SHORT, "hparams": HPARAMS, "dataset_kwargs": SMALL, "progress": False, **kw}
    return train.RunArgs(algorithm=algorithm, dataset="ColoredDigits", test_envs=[2], output_dir=str(folder), **kw)


def cli_options(steps, checkpoint_freq):
    return ["--steps", str(steps), "--checkpoint-freq", str(checkpoint_freq), "--hparams", json.dumps(HPARAMS),
            "--dataset-kwargs", json.dumps(SMALL), "--no-progress"]


def comparable(folder):
    """The run's records without what differs between identical runs: time and folder."""
    out = []
    for r in runfiles.read_records(Path(folder) / "results.jsonl"):
        r = {k: v for k, v in r.items() if k != "step_time"}
        r["args"] = {k: v for k, v in r["args"].items() if k != "output_dir"}
        out.append(r)
    return out


def final_state(folder):
    ckpt = runfiles.load_checkpoint(Path(folder) / "checkpoint.pt", ["model_dict", "rng"])
    return {"model_dict": ckpt["model_dict"], "rng": ckpt["rng"]}


def assert_same(a, b, where="state"):
    """Equal to the bit: tensors by torch.equal, arrays by array_equal, containers recursively."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_run(folder, reference):
    assert (Path(folder) / "done").exists()
    assert comparable(folder) == comparable(reference)
    assert_same(final_state(folder), final_state(reference))


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the autouse fixture is per test; these runs are compared bit for bit
    yield tmp_path_factory.mktemp("runs")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def whole(module_dir):
    """An uninterrupted run (SHORT)."""
    return train.train(run_args(module_dir / "whole"))


@pytest.fixture(scope="module")
def stopped(module_dir, whole):
    """The run as a kill right after its last checkpoint leaves it: no ``done`` mark."""
    folder = module_dir / "stopped"
    shutil.copytree(whole, folder)
    (folder / "done").unlink()
    return folder


@pytest.fixture
def resumable(tmp_path, stopped):
    folder = tmp_path / "run"
    shutil.copytree(stopped, folder)
    return folder


# ---------------------------------------------------------------- atomic files


def test_checkpoint_is_written_to_a_temporary_file_fsynced_renamed_then_the_folder_fsynced(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    path = tmp_path / "checkpoint.pt"
    runfiles.save_checkpoint(path, {"step": 3})
    tmp = str(tmp_path / "checkpoint.pt.tmp")
    assert events == [("fsync", tmp), ("replace", tmp, str(path)), ("fsync", str(tmp_path))]
    assert runfiles.load_checkpoint(path, ["step"]) == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_results_line_is_appended_by_one_write_and_fsynced(tmp_path, monkeypatch):
    events = []
    write, fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, data: events.append(("write", bytes(data))) or write(fd, data))
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync",)) or fsync(fd))
    path = tmp_path / "results.jsonl"
    for step in (0, 2):
        runfiles.append_record(path, {"step": step, "loss": 0.5})
    line = [runfiles.record_line({"step": s, "loss": 0.5}).encode() for s in (0, 2)]
    assert events == [("write", line[0]), ("fsync",), ("write", line[1]), ("fsync",)]
    assert runfiles.read_records(path) == [{"step": 0, "loss": 0.5}, {"step": 2, "loss": 0.5}]


# ---------------------------------------------------------------- crashes and kills


class Crash(Exception):
    pass


def _crash_on_third(monkeypatch, name, before_crash):
    """Make runfiles.<name>'s third call run ``before_crash(path, payload)`` and then crash."""
    real, calls = getattr(runfiles, name), []

    def wrapped(path, payload):
        calls.append(1)
        if len(calls) == 3:
            before_crash(Path(path), payload)
            raise Crash
        real(path, payload)

    monkeypatch.setattr(runfiles, name, wrapped)


FAULTS = {
    # the step-4 record is appended, its checkpoint never written
    "between_record_and_checkpoint": ("save_checkpoint", lambda path, state: None),
    # half of the step-4 record written: a torn last line
    "torn_results_line": ("append_record", lambda path, record: path.open("a").write(
        runfiles.record_line(record)[:40])),
    # half of the step-4 checkpoint's temporary file written
    "torn_checkpoint_write": ("save_checkpoint", lambda path, state: path.with_name(path.name + ".tmp")
                              .write_bytes(runfiles.MAGIC + b"0123")),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_crash_point_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys, whole, fault):
    with monkeypatch.context() as m:
        _crash_on_third(m, *FAULTS[fault])
        with pytest.raises(Crash):
            train.train(run_args(tmp_path / "run"))
    train.train(run_args(tmp_path / "run"))
    err = capsys.readouterr().err
    assert ("torn last line" in err) == (fault == "torn_results_line")
    assert not (tmp_path / "run" / "checkpoint.pt.tmp").exists()
    assert_same_run(tmp_path / "run", whole)


def test_kill_before_the_done_mark_resumes_to_the_uninterrupted_result(resumable, whole, monkeypatch):
    calls = []
    monkeypatch.setattr(Hutchinson, "update", lambda *a: calls.append(1))
    train.train(run_args(resumable))
    assert not calls
    assert_same_run(resumable, whole)


def _stamp(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _kill_after_progress(cmd, progressed, delay, timeout=120.0):
    """Start cmd, wait until ``progressed()``, sleep ``delay``, SIGKILL it."""
    proc = subprocess.Popen(cmd, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not progressed() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the process ended before the kill: make the run longer"


def _kill_point(folder: Path) -> str:
    """Where a kill left a run: checkpoint step, records, a torn line, a temporary file."""
    text = (folder / "results.jsonl").read_bytes() if (folder / "results.jsonl").exists() else b""
    step = runfiles.load_checkpoint(folder / "checkpoint.pt", ["step"])["step"]
    steps = [json.loads(line)["step"] for line in text.split(b"\n")[:-1]]
    return (f"checkpoint before step {step}, records up to step {steps[-1] if steps else None}"
            + (", torn last line" if text and not text.endswith(b"\n") else "")
            + (", temporary checkpoint left" if (folder / "checkpoint.pt.tmp").exists() else ""))


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_run(tmp_path):
    reference = train.train(run_args(tmp_path / "whole", **LONG))
    folder = tmp_path / "killed"
    cmd = [HESSALIGN, "train", "--algorithm", "Hutchinson", "--test-env", "2", "--output-dir", str(folder),
           *cli_options(**LONG)]
    rng = random.Random(20240605)
    kill_points = []
    for _ in range(3):
        before = _stamp(folder / "checkpoint.pt")
        # after this incarnation's first checkpoint, at a random instant of the next few
        _kill_after_progress(cmd, lambda: _stamp(folder / "checkpoint.pt") != before, rng.uniform(0.0, 0.15))
        kill_points.append(_kill_point(folder))
    done = subprocess.run(cmd, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stdout
    print("kill points:", *kill_points, sep="\n  ")
    assert len(set(kill_points)) == 3
    assert_same_run(folder, reference)


def test_sigkill_of_a_sweep_then_rerun_runs_only_what_is_missing(tmp_path):
    options = dict(steps=40, checkpoint_freq=4)
    grid = dict(test_envs=[2], n_trials=2, hparams=HPARAMS, dataset_kwargs=SMALL, progress=False, **options)
    reference = tmp_path / "whole"
    runs = sweep.sweep(["ERM", "HGP"], ["ColoredDigits"], reference, **grid)
    folders = [Path(r.output_dir).relative_to(reference) for r in runs]
    out = tmp_path / "killed"
    cmd = [HESSALIGN, "sweep", "--algorithms", "ERM", "HGP", "--test-envs", "2", "--n-trials", "2",
           "--output-dir", str(out), *cli_options(**options)]

    def one_done_one_started():
        return any((out / f / "done").exists() for f in folders) and \
            any((out / f / "checkpoint.pt").exists() and not (out / f / "done").exists() for f in folders)

    _kill_after_progress(cmd, one_done_one_started, random.Random(7).uniform(0.0, 0.05))
    finished = [f for f in folders if (out / f / "done").exists()]
    partial = [f for f in folders if (out / f / "checkpoint.pt").exists() and f not in finished]
    assert finished and partial, "the kill did not land inside a run"
    stamps = {f: [_stamp(out / f / name) for name in ("results.jsonl", "checkpoint.pt")] for f in finished}

    rerun = subprocess.run(cmd, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"4 runs, {len(finished)} done, {4 - len(finished)} to run" in rerun.stdout
    assert "resuming at step" in rerun.stdout
    for f in finished:  # not run again: the very same files
        assert [_stamp(out / f / name) for name in ("results.jsonl", "checkpoint.pt")] == stamps[f]
    assert sorted(p.parent.relative_to(out) for p in out.rglob("done")) == sorted(folders)
    for f in folders:
        assert_same_run(out / f, reference / f)


# ---------------------------------------------------------------- damaged files

RECOVERY = "delete it to restart the run from step 0"


def _rewrite_checkpoint(path: Path, change):
    state = runfiles.load_checkpoint(path, [])
    change(state)
    runfiles.save_checkpoint(path, state)


def _rename_a_tensor(state):
    state["model_dict"]["classifier.w"] = state["model_dict"].pop("classifier.weight")


CHECKPOINT_DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "checksum mismatch"),
    "truncated_in_header": (lambda p: p.write_bytes(p.read_bytes()[:10]), "bad header"),
    "empty": (lambda p: p.write_bytes(b""), "bad header"),
    "garbage": (lambda p: p.write_bytes(random.Random(0).randbytes(p.stat().st_size)), "bad header"),
    "one_flipped_byte": (lambda p: p.write_bytes(p.read_bytes()[:-100] + bytes([p.read_bytes()[-100] ^ 1])
                                                 + p.read_bytes()[-99:]), "checksum mismatch"),
    "plain_torch_save": (lambda p: torch.save({"model_dict": {}, "step": 4}, p), "bad header"),
    "missing_keys": (lambda p: _rewrite_checkpoint(p, lambda s: s.pop("rng")), "missing rng"),
    "wrong_tensor_names": (lambda p: _rewrite_checkpoint(p, _rename_a_tensor), "its model does not load"),
}


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_damaged_checkpoint_is_refused_naming_it(resumable, damage):
    corrupt, why = CHECKPOINT_DAMAGE[damage]
    path = resumable / "checkpoint.pt"
    corrupt(path)
    with pytest.raises(CorruptFileError) as info:
        train.train(run_args(resumable))
    assert str(path) in str(info.value) and why in str(info.value) and RECOVERY in str(info.value)
    assert not (resumable / "done").exists()


def test_recovery_from_a_damaged_checkpoint_is_to_delete_it(resumable, whole, capsys):
    (resumable / "checkpoint.pt").write_bytes(b"\0" * 100)
    argv = ["train", "--algorithm", "Hutchinson", "--test-env", "2", "--output-dir", str(resumable),
            *cli_options(**SHORT)]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"hessalign: error: {resumable / 'checkpoint.pt'}: ") and RECOVERY in err
    (resumable / "checkpoint.pt").unlink()
    cli.main(argv)
    assert_same_run(resumable, whole)


def test_checkpoint_of_another_run_is_refused(resumable):
    with pytest.raises(ConfigError, match=r"checkpoint\.pt is from another run \(it differs in seed, "
                                          r"hparams\['lr'\]\)"):
        train.train(run_args(resumable, seed=1, hparams={**HPARAMS, "lr": 0.01}))


RESULTS_DAMAGE = {
    "garbage_line": (lambda p: p.write_bytes(p.read_bytes().replace(b"\n", b"\n\x00garbage\x00\n", 1)),
                     ", line 2: not a results record: '\\x00garbage\\x00'"),
    "json_not_a_record": (lambda p: p.write_text("[1, 2]\n" + p.read_text()), ", line 1: not a results record"),
    "missing": (lambda p: p.unlink(), " is missing but a checkpoint follows step 7"),
    "lost_records": (lambda p: p.write_text("".join(p.read_text().splitlines(keepends=True)[:2])),
                     " has no record of step 7"),
}


@pytest.mark.parametrize("damage", RESULTS_DAMAGE)
def test_damaged_results_file_is_refused_naming_it(resumable, damage):
    corrupt, message = RESULTS_DAMAGE[damage]
    corrupt(resumable / "results.jsonl")
    with pytest.raises(CorruptFileError) as info:
        train.train(run_args(resumable))
    assert f"{resumable / 'results.jsonl'}{message}" in str(info.value)


def test_report_refuses_a_damaged_results_file_and_skips_a_torn_last_line(tmp_path, whole, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(whole, runs / "a")
    shutil.copytree(whole, runs / "b")
    with (runs / "b" / "results.jsonl").open("a") as f:
        f.write('{"step": 8, "env0_in')  # a run still going, killed mid-line
    assert len(report.load_records(runs)) == 2 * len(comparable(whole))
    assert "torn last line" in capsys.readouterr().err
    (runs / "a" / "results.jsonl").write_text("not json\n")
    with pytest.raises(SystemExit):
        cli.main(["report", "--input-dir", str(runs)])
    err = capsys.readouterr().err
    assert err == f"hessalign: error: {runs / 'a' / 'results.jsonl'}, line 1: not a results record: 'not json'\n"


# ---------------------------------------------------------------- bad arguments

# every case fails before a step is trained
TRAIN = ["train", "--output-dir", "{tmp}/out", "--steps", "2"]
BAD_ARGUMENTS = {
    "unknown_algorithm": (["--algorithm", "Foo", "--test-env", "2"], "argument --algorithm: invalid choice: 'Foo'"),
    "unknown_dataset": (["--dataset", "Nope", "--test-env", "2"], "argument --dataset: invalid choice: 'Nope'"),
    "test_env_too_big": (["--test-env", "7"], "--test-env 7 is out of range for ColoredDigits (3 environments: 0..2)"),
    "test_env_negative": (["--test-env", "-1"], "--test-env -1 is out of range for ColoredDigits"),
    "all_envs_held_out": (["--test-env", "0", "1", "2"], "--test-env 0 1 2 leaves ColoredDigits (3 environments)"),
    "test_env_not_a_number": (["--test-env", "x"], "argument --test-env/--test-envs: invalid int value: 'x'"),
    "no_test_env": ([], "the following arguments are required: --test-env"),
    "malformed_hparams_json": (["--test-env", "2", "--hparams", "{bad"], "argument --hparams: not valid JSON"),
    "hparams_not_an_object": (["--test-env", "2", "--hparams", "[1]"], "expected a JSON object, got '[1]'"),
    "negative_penalty_weight": (["--algorithm", "HGP", "--test-env", "2", "--hparams", '{"penalty_weight": -1}'],
                                "--hparams: penalty_weight must be at least 0, got -1"),
    "negative_penalty_alpha": (["--algorithm", "Hutchinson", "--test-env", "2", "--hparams",
                                '{"penalty_alpha": -0.5}'], "penalty_alpha must be at least 0, got -0.5"),
    "negative_irm_lambda": (["--algorithm", "IRM", "--test-env", "2", "--hparams", '{"irm_lambda": -3}'],
                            "irm_lambda must be at least 0"),
    "zero_probes": (["--algorithm", "Hutchinson", "--test-env", "2", "--hparams", '{"num_probes": 0}'],
                    "num_probes must be above 0, got 0"),
    "lr_not_a_number": (["--test-env", "2", "--hparams", '{"lr": "fast"}'], "lr must be a finite number, got 'fast'"),
    "lr_nan": (["--test-env", "2", "--hparams", '{"lr": NaN}'], "lr must be a finite number, got nan"),
    "batch_size_fraction": (["--test-env", "2", "--hparams", '{"batch_size": 2.5}'], "batch_size must be an integer"),
    "dropout_one": (["--test-env", "2", "--hparams", '{"mlp_dropout": 1.0}'], "mlp_dropout must be in [0, 1)"),
    "unknown_backend": (["--algorithm", "HGP", "--test-env", "2", "--hparams", '{"backend": "cuda"}'],
                        "backend must be one of kernel, autograd"),
    "unknown_hparam_typo": (["--test-env", "2", "--hparams", '{"lrr": 0.1}'],
                            "--hparams: unknown hparam 'lrr'; did you mean 'lr'?"),
    "unknown_hparam": (["--test-env", "2", "--hparams", '{"zzzz": 1}'], "unknown hparam 'zzzz'; known: "),
    "mnist_without_data_dir": (["--dataset", "ColoredMNIST", "--test-env", "2"],
                               "ColoredMNIST: MNIST datasets need --data-dir"),
    "mnist_data_dir_missing": (["--dataset", "RotatedMNIST", "--test-env", "2", "--data-dir", "{tmp}/none"],
                               "RotatedMNIST: MNIST files not found under {tmp}/none/MNIST/raw"),
    "mnist_download_hint": (["--dataset", "ColoredMNIST", "--test-env", "2", "--data-dir", "{tmp}/none"],
                            """download=True fetches them (hessalign: --dataset-kwargs '{"download": true}')"""),
    "pacs_data_dir_missing": (["--dataset", "PACS", "--test-env", "2", "--data-dir", "{tmp}/none"],
                              "PACS: image-folder dataset: no folder at '{tmp}/none/PACS'"),
    "domain_folder_missing": (["--dataset", "DomainFolder", "--test-env", "0", "--data-dir", "{tmp}/none"],
                              "DomainFolder: image-folder dataset: no folder at '{tmp}/none'"),
    "zero_steps": (["--test-env", "2", "--steps", "0"], "--steps must be at least 1, got 0"),
    "negative_checkpoint_freq": (["--test-env", "2", "--checkpoint-freq", "-3"],
                                 "--checkpoint-freq must be at least 1"),
    "holdout_above_one": (["--test-env", "2", "--holdout-fraction", "1.5"], "--holdout-fraction must be in [0, 1)"),
    "unknown_device": (["--test-env", "2", "--device", "foo"], "--device 'foo' is not a torch device"),
    "unknown_dataset_kwarg": (["--test-env", "2", "--dataset-kwargs", '{"n": 3}'], "ColoredDigits takes no n"),
    "empty_dataset": (["--test-env", "2", "--dataset-kwargs", '{"n_per_domain": 0}'],
                      "ColoredDigits: n_per_domain must be positive"),
    "unknown_option": (["--test-env", "2", "--stpes", "3"], "unrecognized arguments: --stpes 3"),
}
SWEEP = ["sweep", "--output-dir", "{tmp}/out", "--steps", "2"]
BAD_SWEEPS = {
    "sweep_test_env_out_of_range": (["--algorithms", "ERM", "--test-envs", "5"], "--test-env 5 is out of range"),
    # ERM ignores penalty_weight; HGP's negative one stops the sweep before ERM's run starts
    "sweep_negative_penalty_weight": (["--algorithms", "ERM", "HGP", "--test-envs", "2", "--hparams",
                                       '{"penalty_weight": -1}'], "penalty_weight must be at least 0"),
    "sweep_folder_missing": (["--algorithms", "ERM", "--datasets", "DomainFolder", "--data-dir", "{tmp}/none"],
                             "DomainFolder: image-folder dataset: no folder at"),
    "sweep_unknown_algorithm": (["--algorithms", "ERM", "Foo"], "argument --algorithms: invalid choice: 'Foo'"),
    "sweep_zero_jobs": (["--algorithms", "ERM", "--jobs", "0"], "--jobs must be at least 1, got 0"),
    "sweep_zero_trials": (["--algorithms", "ERM", "--n-trials", "0"], "--n-trials must be at least 1, got 0"),
    "sweep_no_hparams_seed": (["--algorithms", "ERM", "--n-hparams", "2", "--n-hparams-from", "2"],
                              "--n-hparams 2 with --n-hparams-from 2 names no hparams seed"),
    "sweep_negative_hparams_from": (["--algorithms", "ERM", "--n-hparams-from", "-1"],
                                    "--n-hparams-from must be at least 0, got -1"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS) + list(BAD_SWEEPS))
def test_bad_argument_gives_one_line_and_exit_status_2(tmp_path, capsys, case):
    command, (extra, message) = (TRAIN, BAD_ARGUMENTS[case]) if case in BAD_ARGUMENTS else (SWEEP, BAD_SWEEPS[case])
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command + extra]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("hessalign: error: ") and err.count("\n") == 1, err
    assert message.replace("{tmp}", str(tmp_path)) in err
    # refused before training: no run wrote a record (a sweep checks all its jobs first)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("results.jsonl"))


def test_main_with_negative_jobs_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["main", "--output-dir", str(tmp_path / "out"), "--jobs", "-1", "--steps", "2"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "hessalign: error: --jobs must be at least 1, got -1\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, below", [
    (["train", "--test-env", "2"], ""), (["train", "--test-env", "2"], "/run"), (["sweep", "--algorithms", "ERM"], ""),
    (["main"], "/runs"),
])
def test_output_dir_in_a_file_is_refused(tmp_path, capsys, command, below):
    file = tmp_path / "a_file"
    file.write_text("keep me")
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--steps", "2", "--output-dir", f"{file}{below}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"hessalign: error: --output-dir {file}{below}: {file} exists and is not a folder\n"
    assert file.read_text() == "keep me"


def test_report_of_a_missing_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["report", "--input-dir", str(tmp_path / "none")])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"hessalign: error: --input-dir {tmp_path / 'none'} is not a folder\n"
    assert not (tmp_path / "none").exists()


def test_every_default_and_sampled_hparams_pass_the_check():
    from hessalign_ext.algorithms import ALGORITHMS

    for dataset in ("ColoredDigits", "PACS"):
        for algorithm in ALGORITHMS:
            hparams_registry.check_overrides(algorithm, dataset, hparams_registry.default_hparams(algorithm, dataset))
            for seed in range(2):
                hparams_registry.check_overrides(algorithm, dataset,
                                                 hparams_registry.random_hparams(algorithm, dataset, seed))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--test-env", "2", "--output-dir", str(tmp_path), "--device", "cuda"])
    assert capsys.readouterr().err == "hessalign: error: --device cuda: CUDA is not available\n"

