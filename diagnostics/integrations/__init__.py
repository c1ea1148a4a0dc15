"""Integrations with training frameworks, each an optional import of its own module.

* :mod:`.lightning`: ``GradientFlowCallback`` for a Trainer of ``lightning.pytorch`` or ``pytorch_lightning``.
* :mod:`.huggingface`: ``GradientFlowCallback`` (a ``TrainerCallback``) with ``attach(trainer)`` for the Trainer.
* :mod:`.session`: what both share (the options they accept, the micro-batch losses of a step, the run id of
  every rank, how a run ends); it imports no framework.

Each framework is imported only by its module, so ``import diagnostics`` never imports one; a missing framework
gives an ``ImportError`` that says what to install. These modules may import :mod:`diagnostics.recording` and
:mod:`diagnostics.store`; nothing imports them but the user's code.
"""
