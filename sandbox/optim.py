"""Optimizer names -> Optax transformations, with hyperparameters as (traced) arguments."""

import math
from collections.abc import Callable
from typing import Any

import optax

# name -> (factory, {hyperparameter: default}). The factory receives every hyperparameter by
# keyword, so a traced value (one lr per vmapped run) flows straight into Optax, which treats
# any non-callable learning rate as a scalar.
_OPTIMIZERS: dict[str, tuple[Callable[..., optax.GradientTransformation], dict]] = {
    "sgd": (lambda lr: optax.sgd(lr), {"lr": None}),
    "momentum": (
        lambda lr, momentum: optax.sgd(lr, momentum=momentum),
        {"lr": None, "momentum": 0.9},
    ),
    "nesterov": (
        lambda lr, momentum: optax.sgd(lr, momentum=momentum, nesterov=True),
        {"lr": None, "momentum": 0.9},
    ),
    "adagrad": (
        lambda lr, eps: optax.adagrad(lr, initial_accumulator_value=0.1, eps=eps),
        {"lr": None, "eps": 1e-7},
    ),
    "rmsprop": (
        lambda lr, decay, eps: optax.rmsprop(lr, decay=decay, eps=eps),
        {"lr": None, "decay": 0.9, "eps": 1e-8},
    ),
    "adam": (
        lambda lr, b1, b2, eps: optax.adam(lr, b1=b1, b2=b2, eps=eps),
        {"lr": None, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
    ),
    "adamw": (
        lambda lr, b1, b2, eps, weight_decay: optax.adamw(
            lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
        ),
        {"lr": None, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
    ),
    # Perturbed gradient descent: Gaussian noise of variance eta / t^gamma added to each
    # gradient (gamma = 0: constant noise); `seed` (an integer, one per run if wanted) keys it.
    "noisy_sgd": (
        lambda lr, eta, gamma, seed: optax.noisy_sgd(lr, eta=eta, gamma=gamma, key=seed),
        {"lr": None, "eta": 0.01, "gamma": 0.0, "seed": 0},
    ),
    "lion": (
        lambda lr, b1, b2, weight_decay: optax.lion(lr, b1=b1, b2=b2, weight_decay=weight_decay),
        {"lr": None, "b1": 0.9, "b2": 0.99, "weight_decay": 0.0},
    ),
}


# The deterministic optimizers in the order the studies tabulate them (noisy_sgd aside).
DETERMINISTIC = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "lion")

# Hyperparameters that are integers (everything else is a float of the run's dtype).
INTEGER_HYPERS = frozenset({"seed"})


def names() -> list[str]:
    """The optimizer names that `make` accepts."""
    return sorted(_OPTIMIZERS)


def hyperparameters(name: str) -> dict[str, Any]:
    """Hyperparameters of `name` with their defaults (None: required)."""
    _check_name(name)
    return dict(_OPTIMIZERS[name][1])


def make(name: str, **hyper: Any) -> optax.GradientTransformation:
    """Builds the optimizer `name`; any hyperparameter may be a traced scalar.

    Args:
      name: one of `names()`.
      **hyper: `lr` (alias `learning_rate`) and the optimizer's own hyperparameters
        (`hyperparameters(name)` lists them with their defaults).

    Returns:
      An `optax.GradientTransformation`.
    """
    hyper = resolve(name, hyper)
    return _OPTIMIZERS[name][0](**hyper)


def resolve(name: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """Fills defaults, checks names and concrete values; returns all hyperparameters."""
    _check_name(name)
    hyper = dict(hyper)
    if "learning_rate" in hyper:
        if "lr" in hyper:
            raise ValueError("give `lr` or `learning_rate`, not both")
        hyper["lr"] = hyper.pop("learning_rate")
    defaults = _OPTIMIZERS[name][1]
    unknown = sorted(set(hyper) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for optimizer {name!r}; "
            f"expected some of {sorted(defaults)}"
        )
    out = {k: hyper.get(k, v) for k, v in defaults.items()}
    if out["lr"] is None:
        raise ValueError(f"optimizer {name!r} needs a learning rate `lr`")
    return out


def check_scalar(name: str, value: Any) -> None:
    """Raises ValueError when a concrete hyperparameter value is out of its range."""
    try:
        v = float(value)
    except (TypeError, ValueError):  # traced or array values are checked by the caller
        return
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {value}")
    if name == "lr" and v <= 0:
        raise ValueError(f"`lr` must be positive, got {value}")
    if name in ("momentum", "b1", "b2", "decay") and not 0 <= v < 1:
        raise ValueError(f"`{name}` must be in [0, 1), got {value}")
    if name == "seed" and (v < 0 or v != int(v)):
        raise ValueError(f"`seed` must be a non-negative integer, got {value}")
    if name in ("eps", "weight_decay", "eta", "gamma") and v < 0:
        raise ValueError(f"`{name}` must be non-negative, got {value}")


def _check_name(name: str) -> None:
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(names())}")
