"""The docstring paragraphs the head ops share, written once. In a docstring passed through
:func:`fill_doc`, a line holding only ``{name}`` becomes fragment ``name``, at that line's indent."""

_LOSS_OPTIONS = """\
Loss options (keyword, as in ``torch.nn.functional.cross_entropy`` applied to each
domain's rows): ``ignore_index``, ``class_weight`` ((C,), needs ``labels``, not
differentiable), ``label_smoothing``, ``reduction`` ("mean" or "sum" per domain)."""

_EMPTY_AND_TILES = """\
A domain that is empty or whose rows are all ignored contributes zeros.
``class_tile``: classes per tile (None: all C at once unless the N×C working buffers
exceed HESSALIGN_TILE_BYTES, default 256 MiB; results agree to rounding for any tile)."""

FRAGMENTS = {
    "head": """\
features: (N, d) float32/float64 (also float16/bfloat16 on CUDA); rows grouped by domain.
weight: (C, d), bias: (C,) or None; the head is ``features @ weight.T + bias``.""",
    "labels": "labels: int64 (N,), each in [0, C) or equal to ignore_index.",
    "offsets": """\
offsets: int64 (E+1,), sorted, 0 .. N, on the CPU or the device of features:
    domain e owns rows offsets[e] .. offsets[e+1]-1.""",
    "probes": """\
num_probes: K >= 1 Rademacher probes, shared by all domains.
seed: probe k's sign at element j is a pure function of (seed, k, j)
    (hessalign_ext.probes), identical on CPU and CUDA; no probe tensor is stored.""",
    # the loss and the gradient take labels as an argument; the curvature ops as an option
    "loss_options": f"{_LOSS_OPTIONS}\n{_EMPTY_AND_TILES}",
    "curvature_options": f"""{_LOSS_OPTIONS}
``labels`` (N,) int64 (keyword) makes it the curvature of exactly that loss: ignored rows
drop out and each row is weighted as in the loss; without labels, of the plain mean loss.
{_EMPTY_AND_TILES}""",
    "backward": """\
Differentiable with respect to features, weight and bias through a closed-form
backward (one fused op); double backward raises RuntimeError. Invalid arguments raise
ValueError naming the argument.""",
}


def fill_doc(fn):
    """Replaces ``fn``'s placeholder lines by their fragments; an unknown name raises KeyError."""
    if fn.__doc__ is None:  # python -OO
        return fn
    lines = []
    for line in fn.__doc__.splitlines():
        key = line.strip()
        if not (key.startswith("{") and key.endswith("}")):
            lines.append(line)
            continue
        indent = line[:len(line) - len(line.lstrip())]
        lines += [indent + part for part in FRAGMENTS[key[1:-1]].splitlines()]
    fn.__doc__ = "\n".join(lines)
    return fn
