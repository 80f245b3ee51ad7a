"""Sweeps: algorithms × datasets × test environments × hparams samples × trial seeds.

As DomainBed's ``sweep.py``: hparams seed 0 is the documented defaults, seeds 1.. are
random samples; each job's training seed is ``seed_hash(dataset, algorithm, test_envs,
hparams_seed, trial_seed)``. Jobs run one after another in this process, or in ``jobs`` worker
processes that share the CPU cores (one torch thread each on two cores: small GEMMs gain
more from running side by side than from two threads), each in its own folder
``output_dir/<dataset>/<algorithm>/te<envs>_h<hparams_seed>_t<trial_seed>``.
Resumable: a finished job is skipped and an interrupted one resumes from its checkpoint
(:func:`hessalign_ext.train.train`), so rerunning the same sweep after a crash or a kill
runs only what is missing and ends with the same runs and records. Every job's arguments
are checked before the first one starts, so a bad one does not stop the sweep hours in.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from . import hparams as hparams_registry
from .datasets import get_dataset_class
from .runfiles import ConfigError
from .train import RunArgs, check_args, check_output_dir, is_done, open_dataset, train

__all__ = ["make_jobs", "sweep"]


def _environments(dataset: str, data_dir, dataset_kwargs) -> int:
    """Number of environments (image folders are opened to count their domains)."""
    cls = get_dataset_class(dataset)
    if cls.ENVIRONMENTS is not None:
        return len(cls.ENVIRONMENTS)
    return len(open_dataset(dataset, data_dir, (), None, dataset_kwargs or {}))


def make_jobs(algorithms: Sequence[str], datasets: Sequence[str], output_dir, *,
              test_envs: Optional[Iterable[int]] = None, n_hparams: int = 1, n_hparams_from: int = 0,
              n_trials: int = 3, **run_kwargs) -> List[RunArgs]:
    """The sweep's runs. ``test_envs``: each one held out in turn (default: every environment).
    ``run_kwargs``: further :class:`RunArgs` fields shared by all runs (steps, hparams, …)."""
    if n_trials < 1:
        raise ConfigError(f"--n-trials must be at least 1, got {n_trials}")
    if n_hparams_from < 0:
        raise ConfigError(f"--n-hparams-from must be at least 0, got {n_hparams_from}")
    if n_hparams <= n_hparams_from:
        raise ConfigError(f"--n-hparams {n_hparams} with --n-hparams-from {n_hparams_from} names no hparams seed "
                          "(the seeds are n_hparams_from .. n_hparams-1)")
    jobs = []
    for dataset in datasets:
        envs = list(test_envs) if test_envs is not None else \
            list(range(_environments(dataset, run_kwargs.get("data_dir"), run_kwargs.get("dataset_kwargs"))))
        for algorithm in algorithms:
            for env in envs:
                for hparams_seed in range(n_hparams_from, n_hparams):
                    for trial_seed in range(n_trials):
                        seed = hparams_registry.seed_hash(dataset, algorithm, [env], hparams_seed, trial_seed)
                        folder = Path(output_dir) / dataset / algorithm / f"te{env}_h{hparams_seed}_t{trial_seed}"
                        jobs.append(RunArgs(algorithm=algorithm, dataset=dataset, test_envs=[env],
                                            output_dir=str(folder), hparams_seed=hparams_seed,
                                            trial_seed=trial_seed, seed=seed, **run_kwargs))
    return jobs


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def sweep(algorithms: Sequence[str], datasets: Sequence[str], output_dir, *, jobs: int = 1,
          **kwargs) -> List[RunArgs]:
    """Run every job of :func:`make_jobs` not finished yet, ``jobs`` at a time; returns the jobs.

    With ``jobs > 1`` the runs' own progress bars are off and one bar counts finished runs.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    check_output_dir(output_dir)
    runs = make_jobs(algorithms, datasets, output_dir, **kwargs)
    for run in runs:
        check_args(run)
    todo = [run for run in runs if not is_done(run.output_dir)]
    print(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to run", flush=True)
    if jobs <= 1 or len(todo) <= 1:
        for i, run in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {run.algorithm} {run.dataset} test env {run.test_envs} "
                  f"hparams {run.hparams_seed} trial {run.trial_seed}", flush=True)
            train(run)
        return runs
    from tqdm.auto import tqdm

    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn: a forked child would inherit the parent's torch thread pool in an unusable state
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(train, dataclasses.replace(run, progress=False)) for run in todo]
        for future in tqdm(as_completed(futures), total=len(futures), desc="sweep", unit="run",
                           disable=not kwargs.get("progress", True)):
            future.result()  # re-raises a failed run's exception here
    return runs
