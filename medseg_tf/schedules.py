"""Learning-rate schedules and optimizers of the trainer (Keras only; TensorFlow is imported only under its
backend, for the fused Adam update of :func:`fuse_adam_update`).

:func:`make_schedule` builds ``"constant"``, ``"cosine"`` or nnU-Net's ``"poly"`` schedule
(:class:`PolyDecay`); :func:`make_optimizer` builds an optimizer from a name or
``{"name": ..., **kwargs}`` with the defaults of :data:`OPTIMIZERS`.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from medseg_tf.errors import ConfigError
from medseg_tf.runspec import OPTIMIZER_NAMES, SCHEDULES, name_and_kwargs

__all__ = ["OPTIMIZERS", "SCHEDULES", "PolyDecay", "make_schedule", "make_optimizer", "fuse_adam_update"]

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

    Under TensorFlow, Adam and AdamW update each variable with one fused kernel (:func:`fuse_adam_update`).

    Create it inside ``strategy.scope()`` when a distribution strategy is used.
    """
    name, kwargs = _optimizer_name_kwargs(spec)
    cls, defaults = OPTIMIZERS[name]
    try:
        optimizer = cls(learning_rate=learning_rate, **{**defaults, **kwargs})
    except TypeError as err:
        raise ConfigError("optimizer", f"{name!r}: {err}") from None
    return fuse_adam_update(optimizer)  # the same Adam, traced faster under TensorFlow


def _fused_adam_update_step(self, gradient, variable, learning_rate):
    """Keras 3's Adam update of one variable as one TensorFlow kernel (``ResourceApplyAdam``).

    The same arithmetic as ``keras.optimizers.Adam.update_step`` (``m += (g - m)(1 - b1)``,
    ``v += (g^2 - v)(1 - b2)``, ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``), which
    builds about 25 small ops per variable instead.
    """
    import tensorflow as tf  # only ever called while TensorFlow traces a step

    dtype = variable.dtype
    index = self._get_variable_index(variable)
    m, v = self._momentums[index], self._velocities[index]
    step = tf.cast(self.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=m.value.handle, v=v.value.handle,
        beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
        lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
        epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def fuse_adam_update(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Let a Keras ``Adam`` or ``AdamW`` update each variable with one fused TensorFlow kernel; return it.

    Keras 3 writes Adam's update of each variable as about 25 separate ops; a U-Net has about 60
    variables, so the training step's graph holds 1,500 ops for the optimizer alone (a third of
    the step). TensorFlow traces and optimizes them every time a model is built: on a 2-core CPU
    this costs about 1.5-2 s per training run, more than a whole quick run trains. The fused
    kernel computes the same update (equal to float32 rounding, ``tests/test_training.py``).
    :func:`make_optimizer` applies it; TensorFlow is imported only under its backend.

    Only the instance changes: its config, its saved form and ``model.keras`` files still say
    ``Adam``, and load anywhere as Keras' own. Other optimizers, ``amsgrad=True`` and other Keras
    backends are returned unchanged. ``AdamW``'s weight decay is applied by Keras before the
    update, as before.
    """
    if (type(optimizer) in (keras.optimizers.Adam, keras.optimizers.AdamW) and not optimizer.amsgrad
            and keras.backend.backend() == "tensorflow"):
        optimizer.update_step = _fused_adam_update_step.__get__(optimizer)
    return optimizer
