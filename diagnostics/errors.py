"""The library's own exceptions: one hierarchy under :class:`DiagnosticsError`, each saying what to do.

Every error raised on purpose by :mod:`diagnostics` is a :class:`DiagnosticsError`, so a caller (a page, the
CLI) can show these as messages and let anything else surface as the bug it is. Each class also derives from
the built-in exception a caller would expect (``ValueError`` for bad input, ``RuntimeError`` for misuse).
This module imports nothing of the library, so every part may import it.
"""

from __future__ import annotations


class DiagnosticsError(Exception):
    """Base class of every error raised on purpose by :mod:`diagnostics`.

    Advice: the message says what was wrong and what to change; anything that is not a ``DiagnosticsError``
    is a bug worth reporting with its traceback.
    """


class MonitorError(DiagnosticsError, RuntimeError):
    """A :class:`~diagnostics.GradientMonitor` was used in a way it cannot support.

    Advice: attach one monitor per model, call ``step()`` after ``backward()`` inside the ``with`` block, and
    check the option the message names.
    """


class NonFiniteGradientError(DiagnosticsError, FloatingPointError):
    """A NaN or Inf appeared while the monitor runs with ``on_nonfinite="raise"``.

    Advice: look at the named layer and step (a lower learning rate, gradient clipping or a loss scaler
    usually helps), or record with ``on_nonfinite="record"`` to see how it spreads.

    Attributes:
        step: The recorded step at which the value appeared.
        layer: The qualified name of the first layer (in forward order for the forward pass,
            in backward order for the backward pass) that held the value.
        phase: ``"forward"`` or ``"backward"``.
    """

    def __init__(self, message: str, *, step: int, layer: str, phase: str) -> None:
        super().__init__(message)
        self.step = step
        self.layer = layer
        self.phase = phase


class StoreError(DiagnosticsError, ValueError):
    """A run store or run could not be read or written (missing run, bad name, unreadable files).

    Advice: ``RunStore.runs()`` lists the readable runs; a run still being written cannot be deleted.
    """


class CheckpointError(DiagnosticsError, ValueError):
    """A checkpoint file could not be loaded safely or its architecture could not be rebuilt.

    Advice: save ``model.state_dict()`` (or safetensors) instead of a pickled model, and give a file this
    project's rebuilder knows (its CNNs, torchvision and timm classifiers, transformers models from a model
    folder, ``torch.export`` archives).
    """


class ManualGradError(DiagnosticsError, ValueError):
    """A manual gradient cannot be computed for these arguments (wrong shape, dtype or size).

    Advice: the message names the argument; pass tensors of the shapes in the rule's docstring.
    """


class UnsupportedModuleError(ManualGradError):
    """No manual backward rule exists for this module type or this configuration of it.

    Advice: ``manual.supported_module_types()`` lists what has a rule; the message names the option that is
    not supported.
    """


class LayerOptionsError(DiagnosticsError, ValueError):
    """PyTorch (or a manual rule) refuses a layer's options or its input; the message gives PyTorch's reason.

    Advice: change the option or input size the message names.
    """


class ProbeError(DiagnosticsError, ValueError):
    """A probe could not run: the batch does not fit the model, or the loss does not fit its output.

    Advice: give a batch of the model's input shape (or none, for a synthetic one) and a loss that fits the
    model's output.
    """


class DataError(DiagnosticsError, ValueError):
    """A dataset could not be loaded or built: unknown name, missing folder or files, wrong layout.

    Advice: use a name from ``DATASETS``, point ``root`` at the folder, or pass ``download=True``.
    """


class ModelConfigError(DiagnosticsError, ValueError):
    """A model configuration asks for something the CNN family cannot build; the message names the field.

    Advice: change the named field of :class:`~diagnostics.CNNConfig`.
    """


class TrainingError(DiagnosticsError, ValueError):
    """Training settings that cannot work (unknown optimiser, batch not divisible by processes, ...).

    Advice: change the named setting of :class:`~diagnostics.TrainConfig` or of ``compare``.
    """


class DistributedTrainingError(DiagnosticsError, RuntimeError):
    """A process of a distributed comparison failed; the message carries the worker's error.

    Advice: run the same comparison with one process to see the error where it happens.
    """


class AccessError(DiagnosticsError, PermissionError):
    """A shared dashboard refused a request: a path outside the folders it was started with, a write in
    read-only mode, a missing token or a ``Host`` it does not serve.

    Advice: use a path inside the folders named at launch (``--root``), or ask whoever started the dashboard
    for the token, or to start it without ``--read-only``.
    """


class ComputeLimitError(DiagnosticsError, RuntimeError):
    """Work asked of a shared dashboard is over its per-server compute limit, or was cancelled.

    Advice: choose fewer steps, variants, a smaller depth or width (the message says the estimate and the
    limit), or run it from your own Python session with ``dx.compare``, where no limit applies.
    """
