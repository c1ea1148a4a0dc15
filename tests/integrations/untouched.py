"""Whether a model is back to its state before training, apart from what the framework itself adds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import hook_state


def added_by(train: Callable[[Any], None], make_model: Callable[[], Any]) -> set[str]:
    """Instance attributes a framework adds to the root module when it trains it without any callback of ours."""
    model = make_model()
    before = set(vars(model))
    train(model)
    return set(vars(model)) - before


def check_untouched(model: Any, clean: dict[str, tuple], framework_attributes: set[str]) -> None:
    """No hook of any kind is left anywhere, and no attribute but those the framework adds itself."""
    now = hook_state(model)
    assert {k: v for k, v in now.items() if k} == {k: v for k, v in clean.items() if k}
    assert now[""][:4] == clean[""][:4]
    assert set(now[""][4]) - set(clean[""][4]) <= framework_attributes
