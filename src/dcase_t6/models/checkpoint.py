"""Loading saved weights into a model, with one clear error when they do not fit it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dcase_t6.common.errors import UserError


@dataclass(frozen=True)
class WeightSource:
    """Where weights come from and what to tell the user when they do not fit (the parts of the error message).

    Args:
        name: who the weights are (``init_from RUN``, ``run RUN checkpoint best``).
        path: the file they come from.
        fix: what the user should do, or a function returning it (called only on an error).
        target: what the weights should fit.
    """

    name: str
    path: str | Path
    fix: str | Callable[[], str]
    target: str = "this model"


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: WeightSource,
                 fresh: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model``; every parameter must fit, except those that start ``fresh``.

    Parameters whose names start with one of ``fresh`` are neither loaded nor required: they keep the
    model's own (fresh) values. Parameters the model drops while loading (retired ones) are not errors.

    Args:
        model: the model to load into.
        state: a state dict, e.g. a checkpoint's ``"model"`` entry.
        source: who the weights are, the file they come from, what the user should do when they do not fit
            and what they should fit, for the message.
        fresh: name prefixes of parameters that start fresh.

    Raises:
        UserError: ``<name>: its weights do not fit <target> (parameter <parameter>: <problem>; <path>); <fix>``
            naming the first parameter that does not fit.
    """
    state = {key: value for key, value in state.items() if not key.startswith(fresh)} if fresh else state
    own = model.state_dict()
    mismatched = next((key for key, value in own.items() if key in state and state[key].shape != value.shape), None)
    if mismatched is not None:
        problem = (f"size mismatch, {list(state[mismatched].shape)} in the file, {list(own[mismatched].shape)} "
                   "in the model")
        _refuse(mismatched, problem, source)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith(fresh)] if fresh else missing
    if missing:
        _refuse(missing[0], "missing from the file", source)
    if unexpected:
        _refuse(unexpected[0], "not in the model", source)


def _refuse(parameter: str, problem: str, source: WeightSource) -> None:
    advice = source.fix() if callable(source.fix) else source.fix
    raise UserError(f"{source.name}: its weights do not fit {source.target} (parameter {parameter}: {problem}; "
                    f"{source.path}); {advice}")
