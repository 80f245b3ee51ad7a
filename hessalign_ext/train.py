"""Train one run, as DomainBed's ``train.py`` does, resumably.

One run = one algorithm, one dataset, held-out test environment(s), one hparams sample and
one trial seed. Each environment is split into ``in`` and ``out`` parts (``holdout_fraction``
out, chosen by ``seed_hash(trial_seed, env)``); the algorithm trains on the ``in`` parts of
the training environments, and every ``checkpoint_freq`` steps (and at the last step) every
split of every environment is evaluated and one line is appended to
``output_dir/results.jsonl`` with DomainBed's keys: ``step``, ``epoch``, ``envK_in_acc``,
``envK_out_acc``, the update's outputs averaged since the last line (``loss``, penalty
terms, …), ``mem_gb``, ``step_time``, ``hparams`` and ``args``. We add
``hessian_gap_envA_envB``: the spectral norm ``‖H_A − H_B‖₂`` of the head-Hessian
difference (:mod:`hessalign_ext.diagnostics`) for every pair of training environments.
Training runs on CUDA when it is available (``device`` overrides), with a tqdm progress bar.

Resuming: every evaluation also writes ``output_dir/checkpoint.pt`` (model, optimizers,
random-number generators, step). Running the same run again continues from it, and a run
whose ``done`` file exists is not redone. Minibatches are a pure function of (trial seed,
environment, step), and the python, numpy and torch generators are restored, so a run killed
at any point and resumed ends with the same weights and records as an uninterrupted one
(bit for bit on the CPU; image folders' augmentations in loader workers are the exception:
they are drawn afresh after a resume). Crash safety and the recovery from damaged files are
described in :mod:`hessalign_ext.runfiles`; a checkpoint of another run (other algorithm,
seeds, hparams, ...) in the folder is refused, not continued.

Bad arguments raise :class:`~hessalign_ext.runfiles.ConfigError` (one line, naming the
option) before any work: :func:`check_args`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import random
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from . import _C, checkpoints, diagnostics
from . import hparams as hparams_registry
from . import runfiles
from .algorithms import get_algorithm_class
from .datasets import get_dataset_class
from .runfiles import ConfigError

__all__ = ["RunArgs", "train", "run_hparams", "is_done", "check_args", "open_dataset"]

_EVAL_CHUNK = 4096      # rows per forward pass when evaluating tensor datasets
_GAP_ROWS = 2048        # rows per environment for the Hessian-gap diagnostic (tensor data)
_GAP_IMAGES = 64        # the same for image files (each costs a featurizer forward)
_GAP_ITERS = 20         # Lanczos steps for the Hessian-gap diagnostic


@dataclasses.dataclass
class RunArgs:
    """Arguments of one run (recorded under ``args`` in every results line, as DomainBed)."""

    algorithm: str
    dataset: str
    test_envs: List[int]
    output_dir: str
    data_dir: Optional[str] = None
    hparams: Optional[dict] = None          # overrides of the (default or sampled) hparams
    hparams_seed: int = 0                   # 0: the documented defaults; else a random sample
    trial_seed: int = 0                     # data: generation, in/out split, minibatches
    seed: int = 0                           # model initialization and training randomness
    steps: Optional[int] = None             # default: the dataset's N_STEPS
    checkpoint_freq: Optional[int] = None   # default: the dataset's CHECKPOINT_FREQ
    holdout_fraction: float = 0.2
    dataset_kwargs: Optional[dict] = None   # extra keywords of the dataset's constructor
    device: Optional[str] = None            # default: cuda when available, else cpu
    progress: bool = True
    task: str = "domain_generalization"     # DomainBed's key; the only task here


def run_hparams(args: RunArgs) -> dict:
    """The run's hparams: defaults (hparams_seed 0) or a random sample, then the overrides."""
    if args.hparams_seed == 0:
        hp = hparams_registry.default_hparams(args.algorithm, args.dataset)
    else:
        seed = hparams_registry.seed_hash(args.hparams_seed, args.trial_seed)
        hp = hparams_registry.random_hparams(args.algorithm, args.dataset, seed)
    hp.update(args.hparams or {})
    return hp


def is_done(output_dir) -> bool:
    return (Path(output_dir) / "done").exists()


def check_output_dir(path) -> None:
    """:class:`ConfigError` unless ``path`` is a folder or can become one (its nearest existing
    ancestor is a folder)."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--output-dir {path}: {existing} exists and is not a folder")


def check_args(args: RunArgs) -> None:
    """Raise :class:`ConfigError` for anything wrong in ``args`` that shows without opening the
    dataset (the environments of a folder dataset are counted when it is opened)."""
    for name, get in (("algorithm", get_algorithm_class), ("dataset", get_dataset_class)):
        try:
            get(getattr(args, name))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for flag, value in (("--steps", args.steps), ("--checkpoint-freq", args.checkpoint_freq)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if not 0 <= args.holdout_fraction < 1:
        raise ConfigError(f"--holdout-fraction must be in [0, 1), got {args.holdout_fraction}")
    check_output_dir(args.output_dir)
    cls = get_dataset_class(args.dataset)
    accepted = [n for n, p in inspect.signature(cls).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(args.dataset_kwargs or {}) - set(accepted))
    if unknown:
        raise ConfigError(f"--dataset-kwargs: {args.dataset} takes no {', '.join(unknown)} "
                          f"(it takes: {', '.join(accepted) or 'nothing'})")
    try:
        hparams_registry.check_overrides(args.algorithm, args.dataset, args.hparams or {})
    except ValueError as exc:
        raise ConfigError(f"--hparams: {exc}") from None
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise ConfigError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available")
    if cls.ENVIRONMENTS is not None:
        _check_test_envs(args, len(cls.ENVIRONMENTS))


def _check_test_envs(args: RunArgs, n: int) -> None:
    for env in args.test_envs:
        if not 0 <= env < n:
            raise ConfigError(f"--test-env {env} is out of range for {args.dataset} "
                              f"({n} environments: 0..{n - 1})")
    if len(set(args.test_envs)) >= n:
        raise ConfigError(f"--test-env {' '.join(map(str, args.test_envs))} leaves {args.dataset} "
                          f"({n} environments) nothing to train on")


def open_dataset(name: str, data_dir, test_envs, hparams, kwargs: dict):
    """The dataset; a missing or malformed data folder is a :class:`ConfigError` naming it."""
    try:
        return get_dataset_class(name)(data_dir, test_envs, hparams, **kwargs)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


# ------------------------------------------------------------------------------ data


def _split(dataset, n_out: int, seed: int):
    """(out keys, in keys) of a random split, as DomainBed's ``misc.split_dataset``."""
    keys = np.arange(len(dataset))
    np.random.RandomState(seed).shuffle(keys)
    return torch.from_numpy(keys[:n_out].copy()), torch.from_numpy(keys[n_out:].copy())


class _Part:
    """One split of one environment: a dataset and the row keys it owns.

    Tensor datasets are indexed directly (on the training device); other datasets
    (image files) go through a ``DataLoader`` with worker processes.
    """

    def __init__(self, dataset, keys, device, num_workers: int):
        self.keys = keys
        self.num_workers = num_workers
        self.device = device
        if isinstance(dataset, TensorDataset):
            self.tensors = tuple(t[keys].to(device) for t in dataset.tensors)
        else:
            self.tensors = None
            self.subset = Subset(dataset, keys.tolist())

    def __len__(self):
        return len(self.keys)

    def batches(self, indices, seed: int = 0):
        """Minibatches for an iterable of index lists, in order. ``seed``: the loader workers'
        (augmentation) seeds; its own generator, so that the global one, which a checkpoint
        restores, is not drawn from when a loader starts."""
        if self.tensors is not None:
            return (tuple(t[torch.as_tensor(i, device=self.device)] for t in self.tensors) for i in indices)
        loader = DataLoader(self.subset, batch_sampler=list(indices), num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(seed))
        return ((x.to(self.device), y.to(self.device)) for x, y in loader)

    def chunks(self, size: int):
        return self.batches([list(range(s, min(s + size, len(self)))) for s in range(0, len(self), size)])


def _step_indices(n: int, batch_size: Optional[int], seed: int, start: int, stop: int):
    """Indices of steps ``start .. stop-1``: the whole part (full batch) or ``batch_size``
    rows drawn with replacement (DomainBed's infinite loader) from a per-step generator."""
    for step in range(start, stop):
        if batch_size is None:
            yield list(range(n))
        else:
            gen = torch.Generator().manual_seed(hparams_registry.seed_hash(seed, step))
            yield torch.randint(n, (int(batch_size),), generator=gen).tolist()


def _make_dataset(args: RunArgs, hparams: dict):
    kwargs = dict(args.dataset_kwargs or {})
    if "seed" in inspect.signature(get_dataset_class(args.dataset)).parameters:
        kwargs.setdefault("seed", args.trial_seed)  # generated and shuffled data follow the trial
    dataset = open_dataset(args.dataset, args.data_dir, args.test_envs, hparams, kwargs)
    _check_test_envs(args, len(dataset))
    return dataset


# ------------------------------------------------------------------------ evaluation


def _accuracy(algorithm, part: _Part) -> float:
    correct, total = 0, 0
    for x, y in part.chunks(_EVAL_CHUNK if part.tensors is not None else 64):
        correct += int((algorithm.predict(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def _hessian_gaps(algorithm, parts: Dict[int, _Part], train_envs: Sequence[int]) -> dict:
    """``hessian_gap_envA_envB`` for every pair of training environments (linear heads only)."""
    head = getattr(algorithm, "classifier", None)
    if not isinstance(head, nn.Linear) or len(train_envs) < 2:
        return {}
    feats, labels, offsets = [], [], [0]
    rows = _GAP_ROWS if parts[train_envs[0]].tensors is not None else _GAP_IMAGES
    for env in train_envs:
        x, y = next(parts[env].chunks(rows))
        feats.append(algorithm.featurizer(x))
        labels.append(y)
        offsets.append(offsets[-1] + len(y))
    opts = algorithm.loss_options()
    if opts["class_weight"] is not None:
        opts["class_weight"] = torch.as_tensor(opts["class_weight"], dtype=head.weight.dtype, device=head.weight.device)
    gaps = diagnostics.hessian_gaps(torch.cat(feats), head.weight, head.bias, offsets, labels=torch.cat(labels),
                                    num_iters=_GAP_ITERS, **opts)
    return {f"hessian_gap_env{train_envs[a]}_env{train_envs[b]}": v for (a, b), v in gaps.items()}


# ------------------------------------------------------------------------------ train


def train(args: RunArgs) -> Path:
    """Run (or resume, or skip if done) one training run; returns its output directory."""
    check_args(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_done(out):
        print(f"{out}: done already, not redone")
        return out
    hparams = run_hparams(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    with reproducible_kernels():
        return _run(args, out, hparams, device)


@contextlib.contextmanager
def reproducible_kernels():
    """cuDNN's deterministic algorithms and the CPU GEMMs' untimed ways (the same in every process)
    while a run trains, as a resumed run must match the uninterrupted one; the settings before it
    are restored after it."""
    cudnn = torch.backends.cudnn
    before = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    timing = _C.set_cpu_gemm_timing(False)
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = before
        _C.set_cpu_gemm_timing(timing)


def _run(args: RunArgs, out: Path, hparams: dict, device: torch.device) -> Path:
    run_start = time.time()

    dataset = _make_dataset(args, hparams)
    test_envs = sorted(int(e) for e in args.test_envs)
    train_envs = [e for e in range(len(dataset)) if e not in test_envs]
    in_parts, out_parts = {}, {}
    for env, env_data in enumerate(dataset):
        out_keys, in_keys = _split(env_data, int(len(env_data) * args.holdout_fraction),
                                   hparams_registry.seed_hash(args.trial_seed, env))
        in_parts[env] = _Part(env_data, in_keys, device, dataset.N_WORKERS)
        out_parts[env] = _Part(env_data, out_keys, device, dataset.N_WORKERS)

    algorithm = get_algorithm_class(args.algorithm)(dataset.input_shape, dataset.num_classes,
                                                    len(train_envs), hparams).to(device)
    n_steps = int(args.steps or dataset.N_STEPS)
    checkpoint_freq = int(args.checkpoint_freq or dataset.CHECKPOINT_FREQ)
    batch_size = hparams["batch_size"]  # None: full batch per training environment
    n_train = min(len(in_parts[e]) for e in train_envs)
    if n_train == 0:
        raise ConfigError(f"{args.dataset}: a training environment has no rows to train on "
                          "(--dataset-kwargs or --holdout-fraction leave it empty)")
    steps_per_epoch = n_train / (batch_size or n_train)

    ckpt_path, results_path = out / "checkpoint.pt", out / "results.jsonl"
    start = 0
    if ckpt_path.exists():
        start = checkpoints.resume(ckpt_path, algorithm, args, hparams)
        checkpoints.keep_records(results_path, start - 1)
        print(f"{out}: resuming at step {start}")
    else:
        results_path.unlink(missing_ok=True)

    streams = [in_parts[e].batches(_step_indices(len(in_parts[e]), batch_size,
                                                 hparams_registry.seed_hash("minibatches", args.trial_seed, e),
                                                 start, n_steps),
                                 seed=hparams_registry.seed_hash("loader", args.seed, e, start))
               for e in train_envs]
    record_args = dataclasses.asdict(args)
    record_args["test_envs"] = test_envs
    vals: Dict[str, List[float]] = {}
    step_start = time.time()
    bar = _progress(range(start, n_steps), args, start, n_steps)
    for step, minibatches in zip(bar, zip(*streams)):
        algorithm.train()
        step_vals = algorithm.update(list(minibatches))
        vals.setdefault("step_time", []).append(time.time() - step_start)
        for k, v in step_vals.items():
            vals.setdefault(k, []).append(v)
        if step % checkpoint_freq == 0 or step == n_steps - 1:
            record = {"step": step, "epoch": step / steps_per_epoch}
            record.update({k: float(np.mean(v)) for k, v in vals.items()})
            algorithm.eval()
            with torch.no_grad():
                for env in range(len(dataset)):
                    record[f"env{env}_in_acc"] = _accuracy(algorithm, in_parts[env])
                    record[f"env{env}_out_acc"] = _accuracy(algorithm, out_parts[env])
                record.update(_hessian_gaps(algorithm, in_parts, train_envs))
            record["mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
            record.update({"hparams": hparams, "args": record_args})
            runfiles.append_record(results_path, record)
            checkpoints.save(ckpt_path, algorithm, step + 1, args, hparams)
            bar.set_postfix(_postfix(record, test_envs), refresh=False)
            vals = {}
        step_start = time.time()
    bar.close()
    (out / "done").write_text("done\n")
    last = runfiles.read_records(results_path)[-1]
    accs = " ".join(f"env{e}{'(test)' if e in test_envs else ''} {last[f'env{e}_in_acc']:.3f}"
                    for e in range(len(dataset)))
    print(f"{out}: {args.algorithm} done in {time.time() - run_start:.0f} s; in-split accuracy {accs}", flush=True)
    return out


def _progress(iterable, args: RunArgs, start: int, total: int):
    from tqdm.auto import tqdm

    desc = f"{args.algorithm} {args.dataset} te{','.join(map(str, args.test_envs))} s{args.trial_seed}"
    return tqdm(iterable, initial=start, total=total, desc=desc, disable=not args.progress, leave=False,
                dynamic_ncols=True)


def _postfix(record: dict, test_envs) -> dict:
    post = {"loss": f"{record.get('loss', float('nan')):.3g}"}
    post.update({f"te{e}": f"{record[f'env{e}_in_acc']:.3f}" for e in test_envs})
    return post
