"""The ``hessalign`` command: ``train``, ``sweep``, ``report`` and ``main``.

``hessalign main`` is the README's main job: ERM, HGP and Hutchinson on the embedded
ColoredDigits benchmark (test environment -90%), three trial seeds, the documented default
hparams; it prints the results table and writes the plots. Everything is resumable: run
the same command again to continue or to just print the report.

A bad argument, bad hparams, a missing data folder or a damaged run file is reported as one
line on stderr (``hessalign: error: ...``) with exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import List, Optional

MAIN_ALGORITHMS = ["ERM", "HGP", "Hutchinson"]
MAIN_DATASET = "ColoredDigits"
MAIN_TEST_ENV = 2


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line: argparse would print the whole usage above them."""

    def error(self, message):
        self.exit(2, f"hessalign: error: {message}\n")


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _run_options(p: argparse.ArgumentParser) -> None:
    """Options every run takes (train and sweep)."""
    p.add_argument("--data-dir", default=None, help="folder of on-disk datasets (MNIST/, PACS/, ...)")
    p.add_argument("--hparams", type=_json, default=None, help="JSON object of hparams overrides")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the dataset's)")
    p.add_argument("--checkpoint-freq", type=int, default=None, help="steps between evaluations/checkpoints")
    p.add_argument("--holdout-fraction", type=float, default=0.2, help="share of each environment held out")
    p.add_argument("--dataset-kwargs", type=_json, default=None,
                   help='JSON object of dataset constructor keywords, e.g. {"n_per_domain": 2000}')
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _run_kwargs(a: argparse.Namespace) -> dict:
    return {"data_dir": a.data_dir, "hparams": a.hparams, "steps": a.steps, "checkpoint_freq": a.checkpoint_freq,
            "holdout_fraction": a.holdout_fraction, "dataset_kwargs": a.dataset_kwargs, "device": a.device,
            "progress": a.progress}


def _parser() -> argparse.ArgumentParser:
    from .algorithms import ALGORITHMS
    from .datasets import DATASETS

    parser = _Parser(prog="hessalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run (resumes from DIR's checkpoint)")
    p.add_argument("--algorithm", default="ERM", choices=ALGORITHMS, metavar="ALGORITHM",
                   help=f"one of {', '.join(ALGORITHMS)} (default: %(default)s)")
    p.add_argument("--dataset", default=MAIN_DATASET, choices=DATASETS, metavar="DATASET",
                   help=f"one of {', '.join(DATASETS)} (default: %(default)s)")
    p.add_argument("--test-env", "--test-envs", dest="test_envs", type=int, nargs="+", required=True,
                   help="held-out environment(s)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--trial-seed", type=int, default=0, help="data seed (generation, split, minibatches)")
    p.add_argument("--hparams-seed", type=int, default=0, help="0: documented defaults; else a random sample")
    _run_options(p)

    p = sub.add_parser("sweep", help="algorithms x datasets x test envs x hparams x trials (resumable)")
    p.add_argument("--algorithms", nargs="+", default=MAIN_ALGORITHMS, choices=ALGORITHMS)
    p.add_argument("--datasets", nargs="+", default=[MAIN_DATASET], choices=DATASETS)
    p.add_argument("--test-envs", type=int, nargs="+", default=None,
                   help="environments to hold out, one at a time (default: each)")
    p.add_argument("--n-hparams", type=int, default=1, help="hparams seeds n_hparams_from .. n_hparams-1")
    p.add_argument("--n-hparams-from", type=int, default=0)
    p.add_argument("--n-trials", type=int, default=3)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, in worker processes")
    _run_options(p)

    p = sub.add_parser("report", help="tables (mean ± std over seeds) and plots of a folder of runs")
    p.add_argument("--input-dir", required=True)
    p.add_argument("--out-dir", default=None, help="default: INPUT_DIR/report")

    p = sub.add_parser("main", help="the main job: ERM, HGP, Hutchinson on ColoredDigits, 3 seeds, report")
    p.add_argument("--output-dir", default="runs/main")
    p.add_argument("--n-trials", type=int, default=3)
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (default: one per CPU core without CUDA, else 1)")
    _run_options(p)
    return parser


def _default_jobs(device: Optional[str]) -> int:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return 1
    return max(1, os.cpu_count() or 1)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the ``hessalign`` console script."""
    from .runfiles import RunError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _run(args)
    except RunError as exc:
        parser.error(" ".join(str(exc).split()))  # one line, whatever the message holds


def _run(args: argparse.Namespace) -> None:
    if args.command == "train":
        from .train import RunArgs, train

        train(RunArgs(algorithm=args.algorithm, dataset=args.dataset, test_envs=args.test_envs,
                      output_dir=args.output_dir, seed=args.seed, trial_seed=args.trial_seed,
                      hparams_seed=args.hparams_seed, **_run_kwargs(args)))
    elif args.command == "sweep":
        from .sweep import sweep

        sweep(args.algorithms, args.datasets, args.output_dir, test_envs=args.test_envs, n_hparams=args.n_hparams,
              n_hparams_from=args.n_hparams_from, n_trials=args.n_trials, jobs=args.jobs, **_run_kwargs(args))
    elif args.command == "report":
        from .report import report

        report(args.input_dir, args.out_dir)
    else:
        from .report import report
        from .sweep import sweep

        start = time.time()
        jobs = _default_jobs(args.device) if args.jobs is None else args.jobs
        sweep(MAIN_ALGORITHMS, [MAIN_DATASET], args.output_dir, test_envs=[MAIN_TEST_ENV], n_trials=args.n_trials,
              jobs=jobs, **_run_kwargs(args))
        report(args.output_dir)
        print(f"main job: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
