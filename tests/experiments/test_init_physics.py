"""He et al. 2015 at step 0: in a 30-layer plain ReLU CNN, Xavier's output gradient vanishes by (1/√2)^(L−1)
relative to He's, while the weight-gradient ratio does not show it.

The per-layer variance argument: backward through a conv layer of fan-out n with weight variance v and a ReLU
multiplies the gradient's variance by n·v/2. He (v = 2/n_in, n_in = n_out) keeps it at 1; Xavier with gain 1
(v = 2/(n_in + n_out) = 1/n) halves it. Between the first and the last conv output lie L − 1 conv layers, so the
first/last output-gradient ratio under Xavier is (1/√2)^(L−1) ≈ 4.3e-5 times He's at L = 30.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diagnostics.experiments.data import load_digits
from diagnostics.experiments.models import build_cnn, variant_config

DEPTH = 30
PREDICTED = (1 / math.sqrt(2)) ** (DEPTH - 1)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def first_last(init: str, seed: int, digits) -> tuple[float, float]:
    """(output-gradient ratio, weight-gradient ratio) of the first over the last conv layer, float64, step 0."""
    model = build_cnn(variant_config("plain", depth=DEPTH, init=init), seed=seed).double()
    outputs = []

    def keep(module, args, y):
        y.retain_grad()
        outputs.append(y)

    handles = [block.conv.register_forward_hook(keep) for block in model.blocks]
    try:
        idx = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(seed))[:64]   # (64,)
        logits = model(digits.x_train[idx].double())                                                    # (64, 10)
        F.cross_entropy(logits, digits.y_train[idx]).backward()
    finally:
        for handle in handles:
            handle.remove()
    first, last = model.blocks[0].conv, model.blocks[-1].conv
    out = outputs[0].grad.norm() / outputs[-1].grad.norm()
    weight = first.weight.grad.norm() / last.weight.grad.norm()
    return float(out), float(weight)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed{s}")
def test_xavier_output_gradient_ratio_is_he_times_inverse_sqrt2_per_layer(seed, digits):
    xavier_out, xavier_weight = first_last("xavier", seed, digits)
    he_out, _ = first_last("he", seed, digits)
    assert PREDICTED / 10 < xavier_out / he_out < PREDICTED * 10
    assert xavier_out < 1e-3 < 0.05 < he_out
    assert 0.1 < xavier_weight < 10          # the weight gradient hides it: activations shrink by the same factor
