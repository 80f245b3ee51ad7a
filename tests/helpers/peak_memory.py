"""Peak extra host memory of one large-head op call, forward and backward, in a fresh process.

    python tests/helpers/peak_memory.py <op> N C d
Measures "ours" (hessalign_ext, class tiles by the memory rule: HESSALIGN_TILE_BYTES from the
environment), then "plain" (the same closed form as plain torch expressions, which hold the
N×C logits and probabilities), and prints each one's peak resident-set growth over the inputs,
in bytes: "ours plain", each on its second full-size call. The peak is the kernel's VmHWM,
reset before each measurement (/proc/self/clear_refs); getrusage's ru_maxrss would not do: it
also keeps the parent's resident size from before the exec.
"""
import resource
import sys

import torch

import hessalign_ext


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def plain(op, z, w, b, labels, v):
    zt = torch.cat([z, torch.ones_like(z[:, :1])], 1)
    wt = torch.cat([w, b[:, None]], 1)
    p = torch.softmax(zt @ wt.T, 1)
    n = z.shape[0]
    if op == "head_grad":
        return (p - torch.nn.functional.one_hot(labels, w.shape[0]).to(p.dtype)).T @ zt / n
    if op == "head_hvp":
        u = zt @ v.T
        return (p * (u - (p * u).sum(1, keepdim=True))).T @ zt / n
    if op == "head_hessian_diag":
        return (p * (1 - p)).T @ (zt * zt) / n
    raise ValueError(op)


def ours(op, z, w, b, labels, v, offsets):
    if op == "head_grad":
        return hessalign_ext.head_grad(z, w, b, labels, offsets)
    if op == "head_hvp":
        return hessalign_ext.head_hvp(z, w, b, v, offsets)
    if op == "head_hessian_diag":
        return hessalign_ext.head_hessian_diag(z, w, b, offsets)
    raise ValueError(op)


def main():
    op, N, C, d = sys.argv[1], *map(int, sys.argv[2:5])
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, d, generator=g, requires_grad=True)
    w = (torch.randn(C, d, generator=g) / d**0.5).requires_grad_(True)
    b = torch.randn(C, generator=g, requires_grad=True)
    labels = torch.randint(0, C, (N,), generator=g)
    v = torch.randn(C, d + 1, generator=g)
    offsets = torch.tensor([0, N // 3, N])
    up = torch.randn(C, d + 1, generator=g)
    # warm both paths on a tiny problem so one-off allocations are not counted
    for f in (lambda: plain(op, z[:2], w[:4], b[:4], labels[:2] % 4, v[:4]),
              lambda: ours(op, z[:2], w[:4], b[:4], labels[:2] % 4, v[:4], torch.tensor([0, 2]))):
        f().sum().backward()
    z.grad = w.grad = b.grad = None
    def call(impl):
        out = plain(op, z, w, b, labels, v) if impl == "plain" else ours(op, z, w, b, labels, v, offsets).sum(0)
        out.backward(up)
        del out
        z.grad = w.grad = b.grad = None

    extra = []
    for impl in ("ours", "plain"):
        # one full-size call first: the BLAS's packing buffers and the allocator's growth for
        # this size are one-off (the first call's peak varied by 20 MiB from run to run)
        call(impl)
        before = rss_bytes()
        reset_peak()
        call(impl)
        extra.append(max(0, peak_bytes() - before))
    print(*extra)


if __name__ == "__main__":
    main()
