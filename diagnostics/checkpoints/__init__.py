"""Checkpoints: safe loading (one function reads every file), architecture recognition and the probe.

Owns reading a checkpoint without running code from it (``loading``: :func:`safe_torch_load` is the only
``torch.load`` of the library; ``huggingface`` reads model folders, ``exported`` reads ``torch.export``
archives without ``torch.export.load``; ``budget`` bounds them all), recognising and rebuilding its
architecture (``architecture``, with the timm signature index in ``timm_index``) and recording a short probe
run of a rebuilt model (``probing``). It may import :mod:`diagnostics.errors`, :mod:`diagnostics.recording`,
:mod:`diagnostics.store`, :mod:`diagnostics.manual` and the CNN family and datasets of
:mod:`diagnostics.experiments`; never the views. ``transformers`` and ``timm`` are imported only inside the
functions that need them, so ``import diagnostics`` stays light.
"""
