"""Times the manual backward rules against autograd's backward, side by side in one run, and prints ratios.

Each case alternates one autograd backward and one manual backward (order swapped every repeat) on the
same tensors and reports the median of the per-pair time ratios manual / autograd, which is robust to
load that drifts during the run. Autograd's time covers only ``output.backward(grad_output)`` (the forward
pass is built before the clock starts); the manual time covers the rule's gradient functions.

Usage: ``python benchmarks/manual_grads.py [--repeats 21] [--threads N]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics.manual import conv, pool  # noqa: E402

CONV_TARGET = 1.2
"""The issue's target for the fast conv2d backward (input + weight + bias) relative to autograd."""


def _autograd_timer(forward: Callable[..., torch.Tensor], inputs: list[torch.Tensor], grad_output: torch.Tensor):
    def run() -> float:
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        output = forward(*leaves)
        start = time.perf_counter()
        output.backward(grad_output)
        return time.perf_counter() - start

    return run


def _manual_timer(manual: Callable[[], object]):
    def run() -> float:
        start = time.perf_counter()
        manual()
        return time.perf_counter() - start

    return run


def measure(autograd_run: Callable[[], float], manual_run: Callable[[], float], repeats: int) -> dict[str, float]:
    """Alternates both runs and returns median times and the median per-pair ratio.

    Args:
        autograd_run: Returns the seconds one autograd backward took.
        manual_run: Returns the seconds one manual backward took.
        repeats: Pairs to time (after two warm-up pairs).

    Returns:
        ``{"autograd_ms", "manual_ms", "ratio"}``.
    """
    for _ in range(2):
        autograd_run()
        manual_run()
    autograd_times, manual_times, ratios = [], [], []
    for i in range(repeats):
        if i % 2 == 0:
            a, m = autograd_run(), manual_run()
        else:
            m, a = manual_run(), autograd_run()
        autograd_times.append(a)
        manual_times.append(m)
        ratios.append(m / a)
    return {
        "autograd_ms": 1e3 * statistics.median(autograd_times),
        "manual_ms": 1e3 * statistics.median(manual_times),
        "ratio": statistics.median(ratios),
    }


def conv2d_case(N: int, C: int, K: int, size: int, reference: bool, repeats: int) -> dict[str, float]:
    """conv2d with k=3, padding=1, float32: manual grad_input + grad_weight + grad_bias vs autograd."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, size, size, generator=generator)
    weight = torch.randn(K, C, 3, 3, generator=generator) * 0.1
    bias = torch.randn(K, generator=generator)
    grad_output = torch.randn(N, K, size, size, generator=generator)
    grad_input, grad_weight, grad_bias = (
        (conv.conv2d_grad_input_reference, conv.conv2d_grad_weight_reference, conv.conv2d_grad_bias_reference)
        if reference
        else (conv.conv2d_grad_input, conv.conv2d_grad_weight, conv.conv2d_grad_bias)
    )

    def manual() -> None:
        grad_input(x.shape, weight, grad_output, 1, 1)
        grad_weight(x, weight.shape, grad_output, 1, 1)
        grad_bias(grad_output)

    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, 1, 1)

    return measure(_autograd_timer(forward, [x, weight, bias], grad_output), _manual_timer(manual), repeats)


def max_pool2d_case(N: int, C: int, size: int, keep_indices: bool, repeats: int) -> dict[str, float]:
    """max_pool2d k=3, s=2, p=1 vs autograd, which scatters the indices it saved in the forward pass.

    ``keep_indices=False``: the manual rule searches the argmax again, as ``manual.backward`` must;
    ``True``: it gets the forward's indices, as autograd does.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, size, size, generator=generator)
    grad_output = torch.randn(N, C, (size - 1) // 2 + 1, (size - 1) // 2 + 1, generator=generator)
    _, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)

    def manual() -> None:
        pool.max_pool2d_grad_input(x, grad_output, 3, 2, 1, indices=indices if keep_indices else None)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, 2, 1)

    return measure(_autograd_timer(forward, [x], grad_output), _manual_timer(manual), repeats)


def avg_pool2d_case(N: int, C: int, size: int, repeats: int) -> dict[str, float]:
    """avg_pool2d k=2, s=2: manual (divisor + transposed convolution with ones) vs autograd."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, size, size, generator=generator)
    grad_output = torch.randn(N, C, size // 2, size // 2, generator=generator)

    def manual() -> None:
        pool.avg_pool2d_grad_input(x.shape, grad_output, 2, 2)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2, 2)

    return measure(_autograd_timer(forward, [x], grad_output), _manual_timer(manual), repeats)


def main(argv: list[str] | None = None) -> int:
    """Runs every case and prints one line per case, then whether each target is met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed pairs per case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU, {args.repeats} pairs per case")
    repeats, loop_repeats = args.repeats, max(3, args.repeats // 7)  # the loops take ~100x longer
    pool = "N=32 C=64 32x32 k=3 s=2 p=1"
    cases = [
        ("conv2d-fast", "N=32 64->64 32x32 k=3 p=1", lambda: conv2d_case(32, 64, 64, 32, False, repeats), CONV_TARGET),
        ("conv2d-loops", "N=2 4->4 8x8 k=3 p=1", lambda: conv2d_case(2, 4, 4, 8, True, loop_repeats), None),
        ("max_pool2d", f"{pool}, argmax searched", lambda: max_pool2d_case(32, 64, 32, False, repeats), None),
        ("max_pool2d", f"{pool}, forward's indices", lambda: max_pool2d_case(32, 64, 32, True, repeats), None),
        ("avg_pool2d", "N=32 C=64 32x32 k=2 s=2", lambda: avg_pool2d_case(32, 64, 32, repeats), None),
    ]
    verdicts = []
    for label, description, run, target in cases:
        result = run()
        print(
            f"{label:12s} {description:46s} autograd {result['autograd_ms']:8.3f} ms  "
            f"manual {result['manual_ms']:8.3f} ms  ratio {result['ratio']:7.2f}"
        )
        if target is None:
            verdicts.append(f"{label} ({description}): no target, reported for information")
        else:
            met = "MET" if result["ratio"] <= target else "NOT MET"
            verdicts.append(f"{label} ({description}): target ratio <= {target}: {met} ({result['ratio']:.2f})")
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
