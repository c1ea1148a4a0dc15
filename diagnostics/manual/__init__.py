"""Hand-written backward passes of conv, pool, activation, linear and batch-norm layers, and their checks.

Usage::

    import diagnostics.manual as manual

    grads = manual.backward(module, x, grad_output)      # {"input": ..., "weight": ..., "bias": ...}
    report = manual.check(module, x)                      # vs autograd and finite differences
    report = manual.check_model(model, example_input)     # every supported layer, with its real inputs
    with manual.use_manual_backward(model):               # train with the manual backward
        model(x).sum().backward()

One file per layer family (``conv``, ``pool``, ``activation``, ``linear``, ``batchnorm``, ``shape``), each
with a fast (vectorised) and a reference (loop) implementation, and one registry (``registry``) from module
type to rule. Each rule's formulas (LaTeX, :func:`formulas`) are written beside it. The rules compute gradients from their formulas with ordinary tensor operations; autograd
appears only as a reference in ``check``.
"""

from __future__ import annotations

from .checks import check, check_model, max_abs_err, max_rel_err
from ..errors import ManualGradError, UnsupportedModuleError
from .functions import ManualBackwardFunction, manual_forward, use_manual_backward
from .network import Residual, network_backward
from .conv import PADDING_MODES
from .registry import IMPLS, backward, formulas, is_supported, register, rule_for, supported_module_types
from .rule import REFERENCE_MAX_STEPS, Formula, Rule

__all__ = [
    "IMPLS",
    "PADDING_MODES",
    "REFERENCE_MAX_STEPS",
    "Formula",
    "ManualBackwardFunction",
    "ManualGradError",
    "Residual",
    "Rule",
    "UnsupportedModuleError",
    "backward",
    "check",
    "check_model",
    "formulas",
    "is_supported",
    "manual_forward",
    "max_abs_err",
    "max_rel_err",
    "network_backward",
    "register",
    "rule_for",
    "supported_module_types",
    "use_manual_backward",
]
