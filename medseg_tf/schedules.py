"""Learning-rate schedules and optimizers of the trainer (Keras only, no TensorFlow import).

:func:`make_schedule` builds ``"constant"``, ``"cosine"`` or nnU-Net's ``"poly"`` schedule
(:class:`PolyDecay`); :func:`make_optimizer` builds an optimizer from a name or
``{"name": ..., **kwargs}`` with the defaults of :data:`OPTIMIZERS`.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from medseg_tf.errors import ConfigError
from medseg_tf.runspec import OPTIMIZER_NAMES, SCHEDULES, name_and_kwargs

__all__ = ["OPTIMIZERS", "SCHEDULES", "PolyDecay", "make_schedule", "make_optimizer"]

#: Optimizer names known to :func:`make_optimizer` and their default keyword arguments
#: (``sgd`` is nnU-Net's: Nesterov momentum 0.99).
OPTIMIZERS: dict[str, tuple[type, dict]] = {
    "adam": (keras.optimizers.Adam, {}),
    "adamw": (keras.optimizers.AdamW, {"weight_decay": 1e-4}),
    "sgd": (keras.optimizers.SGD, {"momentum": 0.99, "nesterov": True}),
    "rmsprop": (keras.optimizers.RMSprop, {}),
}


def _optimizer_name_kwargs(spec) -> tuple[str, dict]:
    return name_and_kwargs("optimizer", spec, OPTIMIZER_NAMES)


@keras.saving.register_keras_serializable(package="medseg_tf")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """nnU-Net's polynomial decay, constant within an epoch.

    ``lr(step) = initial_learning_rate * (1 - epoch / epochs) ** power`` with
    ``epoch = floor(step / steps_per_epoch)`` (0-based), so the last epoch
    still trains with ``initial * (1 / epochs) ** power > 0``.

    Parameters
    ----------
    initial_learning_rate : float
    epochs : int
    steps_per_epoch : int
    power : float
        0.9 in nnU-Net.
    """

    def __init__(self, initial_learning_rate: float, epochs: int, steps_per_epoch: int,
                 power: float = 0.9):
        self.initial_learning_rate = float(initial_learning_rate)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.power = float(power)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        epoch = keras.ops.floor(step / float(self.steps_per_epoch))
        remaining = keras.ops.clip(1.0 - epoch / float(self.epochs), 0.0, 1.0)
        return self.initial_learning_rate * remaining ** self.power

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "power": self.power}


def make_schedule(name: str, learning_rate: float, *, epochs: int, steps_per_epoch: int):
    """The learning rate (a float or a ``LearningRateSchedule`` of the optimizer step).

    Parameters
    ----------
    name : {"constant", "cosine", "poly"}
        ``cosine``: :class:`keras.optimizers.schedules.CosineDecay` from
        ``learning_rate`` to 0 over ``epochs * steps_per_epoch`` steps;
        ``poly``: :class:`PolyDecay` (nnU-Net).
    learning_rate : float
    epochs, steps_per_epoch : int
    """
    if name == "constant":
        return float(learning_rate)
    if name == "cosine":
        return keras.optimizers.schedules.CosineDecay(float(learning_rate),
                                                      decay_steps=int(epochs) * int(steps_per_epoch))
    if name == "poly":
        return PolyDecay(learning_rate, epochs, steps_per_epoch)
    raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")


def make_optimizer(spec: str | Mapping, learning_rate) -> keras.optimizers.Optimizer:
    """Build an optimizer from a name or ``{"name": ..., **kwargs}`` (see :data:`OPTIMIZERS`).

    Create it inside ``strategy.scope()`` when a distribution strategy is used.
    """
    name, kwargs = _optimizer_name_kwargs(spec)
    cls, defaults = OPTIMIZERS[name]
    try:
        return cls(learning_rate=learning_rate, **{**defaults, **kwargs})
    except TypeError as err:
        raise ConfigError("optimizer", f"{name!r}: {err}") from None
