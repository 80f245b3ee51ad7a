"""Tables and plots from a folder of runs (DomainBed's ``collect_results``, plus plots).

Reads every ``results.jsonl`` under the folder. A *run* is one (dataset, algorithm, test
environments, hparams seed, trial seed). Model selection, as DomainBed:

- training-domain validation: in each run the checkpoint with the best mean accuracy on
  the training environments' ``out`` splits; among hparams samples, the best by that value;
- oracle: in each run the last checkpoint; among hparams samples, the best by the test
  environments' ``out`` accuracy.

The selected test accuracy (test environments' ``in`` splits) of every trial seed gives
mean ± std (sample standard deviation; DomainBed prints a standard error instead). The
tables also give the training environments' accuracy at the same checkpoints: a model
that leans on a spurious feature shows a high training and a low test accuracy.

Plots (PNG, matplotlib's Agg backend), per dataset and test environment, of the default
hparams runs (the lowest hparams seed present) averaged over trial seeds: accuracy of
every environment, the penalty's Hessian and gradient terms, and the Hessian gap
``‖H_a − H_b‖₂`` between training environments.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from .runfiles import ConfigError, read_records

__all__ = ["load_records", "select", "tables", "plots", "report", "SELECTION_METHODS"]

RunKey = Tuple[str, str, Tuple[int, ...], int, int]  # dataset, algorithm, test envs, hparams seed, trial seed


def load_records(input_dir) -> List[dict]:
    """Every results line under ``input_dir``, in file and line order (a run still in progress
    may end in a torn line, which is left out with a warning; a damaged file raises)."""
    records = []
    for path in sorted(Path(input_dir).rglob("results.jsonl")):
        records += read_records(path)
    return records


def _runs(records) -> Dict[RunKey, List[dict]]:
    runs = defaultdict(list)
    for r in records:
        a = r["args"]
        runs[(a["dataset"], a["algorithm"], tuple(a["test_envs"]), a["hparams_seed"], a["trial_seed"])].append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in runs.items()}


def _num_envs(record) -> int:
    return sum(1 for k in record if k.endswith("_in_acc") and k.startswith("env"))


def _mean_acc(record, envs, split) -> float:
    return float(np.mean([record[f"env{e}_{split}_acc"] for e in envs]))


def _train_envs(record, test_envs):
    return [e for e in range(_num_envs(record)) if e not in test_envs]


def _training_domain_validation(run, test_envs):
    train_envs = _train_envs(run[0], test_envs)
    best = max(run, key=lambda r: _mean_acc(r, train_envs, "out"))
    return _mean_acc(best, train_envs, "out"), best


def _oracle(run, test_envs):
    last = run[-1]
    return _mean_acc(last, test_envs, "out"), last


SELECTION_METHODS: Dict[str, Callable] = {
    "training-domain validation": _training_domain_validation,
    "oracle": _oracle,
}


def select(records, method: str) -> Dict[Tuple[str, str, Tuple[int, ...]], List[Tuple[float, float]]]:
    """``{(dataset, algorithm, test_envs): [(test acc, training-envs acc) per trial seed]}``."""
    choose = SELECTION_METHODS[method]
    best: Dict[tuple, tuple] = {}
    for (dataset, algorithm, test_envs, _, trial), run in _runs(records).items():
        val, record = choose(run, test_envs)
        key = (dataset, algorithm, test_envs, trial)
        if key not in best or val > best[key][0]:
            best[key] = (val, record)
    out = defaultdict(list)
    for (dataset, algorithm, test_envs, trial), (_, r) in sorted(best.items()):
        out[(dataset, algorithm, test_envs)].append(
            (_mean_acc(r, test_envs, "in"), _mean_acc(r, _train_envs(r, test_envs), "in")))
    return dict(out)


def _fmt(values) -> str:
    values = 100 * np.asarray(values)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.1f} ± {std:.1f}"


def _env_names(dataset: str, n: int) -> List[str]:
    from .datasets import get_dataset_class

    envs = get_dataset_class(dataset).ENVIRONMENTS if dataset else None
    return list(envs) if envs is not None and len(envs) == n else [f"env{e}" for e in range(n)]


def tables(records) -> str:
    """Markdown tables: per dataset and selection method, one row per algorithm, one column
    per held-out environment (its test accuracy), their average and the training accuracy."""
    if not records:
        return "no results\n"
    n_envs = {r["args"]["dataset"]: _num_envs(r) for r in records}
    lines = []
    for method in SELECTION_METHODS:
        selected = select(records, method)
        for dataset in sorted(n_envs):
            cells = {k: v for k, v in selected.items() if k[0] == dataset}
            held_out = sorted({k[2] for k in cells})
            names = _env_names(dataset, n_envs[dataset])
            seeds = sorted({len(v) for v in cells.values()})
            header = [" + ".join(names[e] for e in te) + " (test)" for te in held_out]
            avg = len(held_out) > 1
            lines += [f"### {dataset}: {method} (accuracy %, mean ± std over "
                      f"{'/'.join(map(str, seeds))} trial seeds)", "",
                      "| Algorithm | " + " | ".join(header + (["Avg"] if avg else []) + ["training envs"]) + " |",
                      "|---" * (len(header) + avg + 2) + "|"]
            for algorithm in sorted({k[1] for k in cells}, key=_algorithm_order):
                row, means, train = [algorithm], [], []
                for te in held_out:
                    accs = cells.get((dataset, algorithm, te))
                    row.append(_fmt([a for a, _ in accs]) if accs else "X")
                    means.append(np.mean([a for a, _ in accs]) if accs else np.nan)
                    train += [t for _, t in accs or []]
                if avg:
                    row.append("X" if np.isnan(means).any() else f"{100 * np.mean(means):.1f}")
                row.append(_fmt(train))
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines)


def _algorithm_order(name: str):
    from .algorithms import ALGORITHMS

    return (ALGORITHMS.index(name) if name in ALGORITHMS else len(ALGORITHMS), name)


# ------------------------------------------------------------------------------ plots


def _curves(runs: List[List[dict]], key: str):
    """(steps, mean, std) of ``key`` over runs, at the steps every run logged it."""
    by_step = defaultdict(list)
    for run in runs:
        for r in run:
            if key in r and r[key] is not None:
                by_step[r["step"]].append(r[key])
    steps = sorted(s for s, v in by_step.items() if len(v) == len(runs))
    values = [np.asarray(by_step[s], dtype=float) for s in steps]
    return np.asarray(steps), np.asarray([v.mean() for v in values]), np.asarray([v.std() for v in values])


def _default_runs(records) -> Dict[Tuple[str, Tuple[int, ...]], Dict[str, List[List[dict]]]]:
    """{(dataset, test envs): {algorithm: runs of its lowest hparams seed}}."""
    runs = _runs(records)
    lowest = {}
    for dataset, algorithm, te, h, _ in runs:
        lowest[(dataset, algorithm, te)] = min(h, lowest.get((dataset, algorithm, te), h))
    out = defaultdict(lambda: defaultdict(list))
    for (dataset, algorithm, te, h, _), run in runs.items():
        if h == lowest[(dataset, algorithm, te)]:
            out[(dataset, te)][algorithm].append(run)
    return out


def _band(ax, steps, mean, std, **kw):
    line, = ax.plot(steps, mean, **kw)
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plots(records, out_dir) -> List[Path]:
    """Write the PNG plots into ``out_dir``; returns their paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    groups = _default_runs(records)
    every = sorted({a for by_alg in groups.values() for a in by_alg}, key=_algorithm_order)
    color = {a: f"C{i % 10}" for i, a in enumerate(every)}  # an algorithm's colour in every plot
    for (dataset, te), by_alg in sorted(groups.items()):
        algorithms = sorted(by_alg, key=_algorithm_order)
        tag = f"{dataset}_te{'-'.join(map(str, te))}"
        n_envs = _num_envs(next(iter(by_alg.values()))[0][0])
        names = _env_names(dataset, n_envs)

        fig, axes = plt.subplots(1, len(algorithms), figsize=(4.2 * len(algorithms), 3.4), sharey=True,
                                 squeeze=False)
        for ax, algorithm in zip(axes[0], algorithms):
            for e in range(n_envs):
                test = e in te
                _band(ax, *_curves(by_alg[algorithm], f"env{e}_in_acc"), linestyle="--" if test else "-",
                      label=f"{names[e]}{' (test)' if test else ''}")
            ax.set_title(f"{algorithm} (n={len(by_alg[algorithm])})")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("accuracy (in split)")
        axes[0][0].legend(fontsize=8)
        written.append(_save(fig, out_dir / f"accuracy_{tag}.png", f"{dataset}: accuracy per environment"))

        with_terms = [a for a in algorithms if any("penalty_hessian" in r for run in by_alg[a] for r in run)]
        if with_terms:
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
            for ax, key, title in zip(axes, ("penalty_hessian", "penalty_gradient"),
                                      ("Hessian term (mean over domains)", "gradient term (mean over domains)")):
                for algorithm in with_terms:
                    _band(ax, *_curves(by_alg[algorithm], key), label=algorithm, color=color[algorithm])
                ax.set_yscale("log")
                ax.set_title(title)
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
            axes[0].legend(fontsize=8)
            written.append(_save(fig, out_dir / f"penalty_{tag}.png", f"{dataset}: penalty terms (unweighted)"))

        gap_keys = sorted({k for a in algorithms for run in by_alg[a] for r in run for k in r
                           if k.startswith("hessian_gap_")})
        if gap_keys:
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
            for algorithm in algorithms:
                for key, style in zip(gap_keys, itertools.cycle(("-", "--", ":", "-."))):
                    pair = key[len("hessian_gap_"):].replace("_", "–")
                    _band(ax, *_curves(by_alg[algorithm], key), color=color[algorithm], linestyle=style,
                          label=algorithm if len(gap_keys) == 1 else f"{algorithm} {pair}")
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel("‖H_a − H_b‖₂")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            written.append(_save(fig, out_dir / f"hessian_gap_{tag}.png",
                                 f"{dataset}: head-Hessian gap between training environments"))
    return written


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def report(input_dir, out_dir=None, *, quiet: bool = False) -> Dict[str, object]:
    """Tables (printed, and written to ``out_dir/tables.md``) and plots for ``input_dir``.

    ``out_dir`` defaults to ``input_dir/report``. Returns ``{"tables": str, "tables_path":
    Path, "plots": [Path]}``.
    """
    if not Path(input_dir).is_dir():
        raise ConfigError(f"--input-dir {input_dir} is not a folder")
    records = load_records(input_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(input_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = tables(records)
    tables_path = out_dir / "tables.md"
    tables_path.write_text(text)
    written = plots(records, out_dir) if records else []
    if not quiet:
        print(text)
        print(f"tables: {tables_path}")
        for path in written:
            print(f"plot: {path}")
    return {"tables": text, "tables_path": tables_path, "plots": written}
