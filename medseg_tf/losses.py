"""Segmentation losses and the streaming Dice metric, written with ``keras.ops``.

Conventions shared by every function here:

* ``y_true``: integer labels, shape ``(B, *spatial)`` (a trailing channel of
  size 1, ``(B, *spatial, 1)``, is accepted too), any integer or float dtype
  holding the values ``0 .. C-1``.
* ``y_pred``: class probabilities (the softmax output of the model), shape
  ``(B, *spatial, C)``. ``y_pred`` is cast to float32 first, so the losses are
  safe under the ``mixed_float16`` policy (sums over many voxels in float16
  overflow or lose precision).
* ``spatial`` is ``(H, W)`` for 2D and ``(X, Y, Z)`` for 3D: the code is the
  same for both.
* Every loss function returns a float32 **scalar**: the loss of the batch
  (mean over samples where a per-sample value exists).

Each loss exists twice: as a plain function (``soft_dice_loss(y_true, y_pred)``)
and as a serialisable :class:`keras.losses.Loss` subclass (``DiceLoss()``) for
``model.compile``; :func:`get_loss` builds the latter from a name.

Soft Dice of class ``c`` (probabilities ``p``, one-hot truth ``g``)::

    dice_c = (2 * sum(p_c * g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)

with the sums taken over the voxels of each sample (``per_sample=True``) or over
the voxels of the whole batch (``per_sample=False``, "batch Dice", the nnU-Net
default for most configurations). ``smooth`` (default ``1e-5`` as in nnU-Net) is
added to numerator and denominator: it avoids 0/0 and decides the value for an
empty class. If a class is absent from the truth, ``dice_c = smooth / (sum(p_c)
+ smooth)``: 1 when nothing is predicted, close to 0 as soon as the network
predicts any probability for it, so an empty class pushes its probabilities
down. The loss is ``1 - mean_c dice_c`` over the foreground classes
``1 .. C-1`` (``include_background=False``, the default) or over all classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

#: Probabilities are clipped to ``[EPSILON, 1]`` before a logarithm.
EPSILON = 1e-7

__all__ = [
    "EPSILON",
    "one_hot_labels",
    "soft_dice_per_class",
    "soft_dice_loss",
    "cross_entropy",
    "dice_ce_loss",
    "focal_loss",
    "tversky_loss",
    "DiceLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "FocalLoss",
    "TverskyLoss",
    "LOSSES",
    "get_loss",
    "DiceScore",
    "dice_metrics",
]


# --------------------------------------------------------------------------- helpers


def _prepare(y_true, y_pred):
    """Return ``(one_hot (B, *spatial, C) float32, probs (B, *spatial, C) float32)``."""
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
    y_true = ops.convert_to_tensor(y_true)
    rank = len(y_pred.shape)
    if rank < 3:
        raise ValueError(f"y_pred must have shape (B, *spatial, C); got rank {rank}")
    if len(y_true.shape) == rank and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    if len(y_true.shape) != rank - 1:
        raise ValueError(
            f"y_true must have shape (B, *spatial) or (B, *spatial, 1) matching y_pred "
            f"{tuple(y_pred.shape)}; got {tuple(y_true.shape)}"
        )
    for a, b in zip(y_true.shape, y_pred.shape[:-1]):
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"y_true shape {tuple(y_true.shape)} does not match y_pred shape "
                f"{tuple(y_pred.shape)} (expected (B, *spatial) and (B, *spatial, C))"
            )
    num_classes = y_pred.shape[-1]
    if num_classes is None:
        raise ValueError("the number of classes (last axis of y_pred) must be known")
    if num_classes < 2:
        raise ValueError("y_pred must hold C >= 2 softmax probabilities (background included); a one-channel "
                         "sigmoid output is not supported by these losses")
    return one_hot_labels(y_true, num_classes), y_pred


def one_hot_labels(y_true, num_classes: int):
    """One-hot encode integer labels.

    Parameters
    ----------
    y_true : tensor, shape (B, *spatial), integer or float holding integers
        Labels ``0 .. num_classes-1``.
    num_classes : int
        Number of classes ``C``.

    Returns
    -------
    tensor, shape (B, *spatial, C), float32
    """
    return ops.one_hot(ops.cast(y_true, "int32"), int(num_classes), dtype="float32")


def _class_slice(x, include_background: bool):
    return x if include_background else x[..., 1:]


def _reduce_axes(rank: int, per_sample: bool) -> tuple[int, ...]:
    """Axes summed for Dice-like scores: spatial axes (+ batch axis for batch Dice)."""
    spatial = tuple(range(1, rank - 1))
    return spatial if per_sample else (0, *spatial)


# --------------------------------------------------------------------------- functions


def soft_dice_per_class(y_true, y_pred, *, smooth: float = 1e-5, per_sample: bool = False):
    """Soft Dice of every class (including background).

    Parameters
    ----------
    y_true : tensor, shape (B, *spatial) or (B, *spatial, 1)
        Integer labels.
    y_pred : tensor, shape (B, *spatial, C)
        Probabilities.
    smooth : float
        Added to numerator and denominator (see the module docstring).
    per_sample : bool
        Sum over each sample's voxels (result ``(B, C)``) instead of over the
        whole batch (result ``(C,)``).

    Returns
    -------
    tensor, float32, shape (B, C) if ``per_sample`` else (C,)
    """
    truth, prob = _prepare(y_true, y_pred)
    axes = _reduce_axes(len(prob.shape), per_sample)
    intersection = ops.sum(truth * prob, axis=axes)
    total = ops.sum(truth, axis=axes) + ops.sum(prob, axis=axes)
    return (2.0 * intersection + smooth) / (total + smooth)


def soft_dice_loss(y_true, y_pred, *, include_background: bool = False, per_sample: bool = False,
                   smooth: float = 1e-5):
    """Multi-class soft Dice loss ``1 - mean_c dice_c``.

    Parameters
    ----------
    y_true : tensor, shape (B, *spatial) or (B, *spatial, 1)
        Integer labels.
    y_pred : tensor, shape (B, *spatial, C)
        Probabilities (softmax output).
    include_background : bool
        Average over all ``C`` classes instead of the foreground ``1 .. C-1``.
    per_sample : bool
        Dice per sample, then averaged over samples and classes; default
        ``False`` sums over the batch ("batch Dice").
    smooth : float
        Smoothing term (default 1e-5, nnU-Net's).

    Returns
    -------
    scalar tensor, float32, in [0, 1]
    """
    dice = soft_dice_per_class(y_true, y_pred, smooth=smooth, per_sample=per_sample)
    return 1.0 - ops.mean(_class_slice(dice, include_background))


def cross_entropy(y_true, y_pred, *, class_weights: Sequence[float] | None = None):
    """Categorical cross-entropy, averaged over all voxels of the batch.

    ``-mean(log(p_y))`` with ``p`` clipped to ``[EPSILON, 1]``; with
    ``class_weights`` the weighted mean ``sum(w[y] * -log p_y) / sum(w[y])``.

    Parameters
    ----------
    y_true : tensor, shape (B, *spatial) or (B, *spatial, 1)
        Integer labels.
    y_pred : tensor, shape (B, *spatial, C)
        Probabilities.
    class_weights : sequence of C floats, optional
        Weight of each true class.

    Returns
    -------
    scalar tensor, float32 (natural log, nats per voxel)
    """
    truth, prob = _prepare(y_true, y_pred)
    nll = -ops.sum(truth * ops.log(ops.clip(prob, EPSILON, 1.0)), axis=-1)
    if class_weights is None:
        return ops.mean(nll)
    weights = ops.sum(truth * ops.convert_to_tensor(list(class_weights), "float32"), axis=-1)
    return ops.sum(weights * nll) / ops.maximum(ops.sum(weights), EPSILON)


def dice_ce_loss(y_true, y_pred, *, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 include_background: bool = False, per_sample: bool = False, smooth: float = 1e-5):
    """nnU-Net's default loss: ``ce_weight * CE + dice_weight * soft Dice loss``.

    Cross-entropy gives well-behaved gradients from the first step; Dice
    counters the class imbalance (a few % foreground). Arguments as in
    :func:`cross_entropy` and :func:`soft_dice_loss`.

    Returns
    -------
    scalar tensor, float32
    """
    ce = cross_entropy(y_true, y_pred)
    dice = soft_dice_loss(y_true, y_pred, include_background=include_background,
                          per_sample=per_sample, smooth=smooth)
    return ce_weight * ce + dice_weight * dice


def focal_loss(y_true, y_pred, *, gamma: float = 2.0, alpha: Sequence[float] | None = None):
    """Focal loss (Lin et al. 2017), averaged over all voxels of the batch.

    ``-mean(alpha[y] * (1 - p_y)**gamma * log(p_y))``: voxels already classified
    with confidence (``p_y`` near 1) are down-weighted, so the many easy
    background voxels stop dominating. ``gamma=0`` without ``alpha`` is the
    cross-entropy.

    Parameters
    ----------
    y_true : tensor, shape (B, *spatial) or (B, *spatial, 1)
        Integer labels.
    y_pred : tensor, shape (B, *spatial, C)
        Probabilities.
    gamma : float
        Focusing exponent (>= 0).
    alpha : sequence of C floats, optional
        Weight of each true class (plain mean, not renormalised).

    Returns
    -------
    scalar tensor, float32
    """
    truth, prob = _prepare(y_true, y_pred)
    p_true = ops.clip(ops.sum(truth * prob, axis=-1), EPSILON, 1.0)
    loss = -((1.0 - p_true) ** gamma) * ops.log(p_true)
    if alpha is not None:
        loss = loss * ops.sum(truth * ops.convert_to_tensor(list(alpha), "float32"), axis=-1)
    return ops.mean(loss)


def tversky_loss(y_true, y_pred, *, alpha: float = 0.3, beta: float = 0.7,
                 include_background: bool = False, per_sample: bool = False, smooth: float = 1e-5):
    """Tversky loss (Salehi et al. 2017) ``1 - mean_c TI_c``.

    ``TI_c = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)`` with soft
    counts ``TP = sum(p g)``, ``FP = sum(p (1 - g))``, ``FN = sum((1 - p) g)``.
    ``beta > alpha`` penalises missed foreground more than false alarms (higher
    recall); ``alpha = beta = 0.5`` is the soft Dice loss.

    Parameters
    ----------
    y_true, y_pred, include_background, per_sample, smooth
        As in :func:`soft_dice_loss`.
    alpha : float
        Weight of false positives.
    beta : float
        Weight of false negatives.

    Returns
    -------
    scalar tensor, float32
    """
    truth, prob = _prepare(y_true, y_pred)
    axes = _reduce_axes(len(prob.shape), per_sample)
    tp = ops.sum(truth * prob, axis=axes)
    fp = ops.sum((1.0 - truth) * prob, axis=axes)
    fn = ops.sum(truth * (1.0 - prob), axis=axes)
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return 1.0 - ops.mean(_class_slice(index, include_background))


# --------------------------------------------------------------------------- Loss classes


class _FunctionLoss(keras.losses.Loss):
    """A :class:`keras.losses.Loss` calling one of the functions above with fixed kwargs."""

    _fn = None

    def __init__(self, loss_kwargs: dict, *, name: str, reduction: str, dtype):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._loss_kwargs = dict(loss_kwargs)

    def call(self, y_true, y_pred):
        return type(self)._fn(y_true, y_pred, **self._loss_kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._loss_kwargs)
        return config


def _list_or_none(values):
    return None if values is None else [float(v) for v in values]


@keras.saving.register_keras_serializable(package="medseg_tf")
class DiceLoss(_FunctionLoss):
    """Soft Dice loss as a Keras ``Loss`` (see :func:`soft_dice_loss`)."""

    _fn = staticmethod(soft_dice_loss)

    def __init__(self, include_background: bool = False, per_sample: bool = False,
                 smooth: float = 1e-5, *, name: str = "dice",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(dict(include_background=bool(include_background),
                              per_sample=bool(per_sample), smooth=float(smooth)),
                         name=name, reduction=reduction, dtype=dtype)


@keras.saving.register_keras_serializable(package="medseg_tf")
class CrossEntropyLoss(_FunctionLoss):
    """Voxel-wise cross-entropy as a Keras ``Loss`` (see :func:`cross_entropy`)."""

    _fn = staticmethod(cross_entropy)

    def __init__(self, class_weights: Sequence[float] | None = None, *, name: str = "ce",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(dict(class_weights=_list_or_none(class_weights)),
                         name=name, reduction=reduction, dtype=dtype)


@keras.saving.register_keras_serializable(package="medseg_tf")
class DiceCELoss(_FunctionLoss):
    """Cross-entropy + soft Dice, nnU-Net's default (see :func:`dice_ce_loss`)."""

    _fn = staticmethod(dice_ce_loss)

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 include_background: bool = False, per_sample: bool = False,
                 smooth: float = 1e-5, *, name: str = "dice_ce",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(dict(dice_weight=float(dice_weight), ce_weight=float(ce_weight),
                              include_background=bool(include_background),
                              per_sample=bool(per_sample), smooth=float(smooth)),
                         name=name, reduction=reduction, dtype=dtype)


@keras.saving.register_keras_serializable(package="medseg_tf")
class FocalLoss(_FunctionLoss):
    """Focal loss as a Keras ``Loss`` (see :func:`focal_loss`)."""

    _fn = staticmethod(focal_loss)

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None, *,
                 name: str = "focal", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(dict(gamma=float(gamma), alpha=_list_or_none(alpha)),
                         name=name, reduction=reduction, dtype=dtype)


@keras.saving.register_keras_serializable(package="medseg_tf")
class TverskyLoss(_FunctionLoss):
    """Tversky loss as a Keras ``Loss`` (see :func:`tversky_loss`)."""

    _fn = staticmethod(tversky_loss)

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, include_background: bool = False,
                 per_sample: bool = False, smooth: float = 1e-5, *, name: str = "tversky",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(dict(alpha=float(alpha), beta=float(beta),
                              include_background=bool(include_background),
                              per_sample=bool(per_sample), smooth=float(smooth)),
                         name=name, reduction=reduction, dtype=dtype)


#: The names :func:`get_loss` knows, with their classes.
LOSSES: dict[str, type[keras.losses.Loss]] = {
    "dice": DiceLoss,
    "dice_ce": DiceCELoss,
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "tversky": TverskyLoss,
}


def get_loss(name: str, **kwargs) -> keras.losses.Loss:
    """Build a loss from its name: ``"dice"``, ``"dice_ce"``, ``"ce"``, ``"focal"``, ``"tversky"``.

    Keyword arguments go to the class (e.g. ``get_loss("focal", gamma=1.0)``).

    Raises
    ------
    ValueError
        For an unknown name or a keyword the loss does not take.
    """
    key = str(name).strip().lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    try:
        return LOSSES[key](**kwargs)
    except TypeError as err:
        raise ValueError(f"loss {key!r}: bad keyword argument(s) {sorted(kwargs)}: {err}") from None


# --------------------------------------------------------------------------- metric


@keras.saving.register_keras_serializable(package="medseg_tf")
class DiceScore(keras.metrics.Metric):
    """Streaming hard Dice of one class, or the mean over foreground classes.

    The prediction is ``argmax(y_pred)``. Over all batches seen since the last
    reset the metric accumulates, per class, the intersection ``|P ∩ T|`` and
    the sum ``|P| + |T|`` (voxel counts), and reports the **global** Dice
    ``2 |P ∩ T| / (|P| + |T|)`` over the whole validation set, not the mean of
    per-batch or per-case Dice (which would let small slices with few voxels
    weigh as much as large ones). A class absent from both prediction and truth
    counts as Dice 1.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C`` (last axis of ``y_pred``).
    class_id : int or None
        The class reported; ``None`` reports the mean Dice over the foreground
        classes ``1 .. C-1``.
    name : str, optional
        Defaults to ``dice_<class_id>`` or ``dice_mean``.
    """

    def __init__(self, num_classes: int, class_id: int | None = None, name: str | None = None,
                 dtype=None):
        if name is None:
            name = "dice_mean" if class_id is None else f"dice_{class_id}"
        super().__init__(name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if class_id is not None and not 0 <= int(class_id) < self.num_classes:
            raise ValueError(f"class_id {class_id} outside 0..{self.num_classes - 1}")
        self.class_id = None if class_id is None else int(class_id)
        self.intersection = self.add_variable(shape=(self.num_classes,), initializer="zeros",
                                              dtype="float32", name="intersection",
                                              aggregation="sum")
        self.total = self.add_variable(shape=(self.num_classes,), initializer="zeros",
                                       dtype="float32", name="total", aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch: ``y_true`` (B, *spatial[, 1]) labels, ``y_pred`` (B, *spatial, C).

        ``sample_weight`` is ignored: this global Dice counts every voxel of the epoch once.
        """
        truth, prob = _prepare(y_true, y_pred)
        pred = one_hot_labels(ops.argmax(prob, axis=-1), self.num_classes)
        axes = tuple(range(len(prob.shape) - 1))
        self.intersection.assign_add(ops.sum(truth * pred, axis=axes))
        self.total.assign_add(ops.sum(truth, axis=axes) + ops.sum(pred, axis=axes))

    def per_class(self):
        """Global Dice of every class so far, shape (C,), float32."""
        safe = ops.maximum(self.total, 1.0)
        return ops.where(self.total > 0, 2.0 * self.intersection / safe, 1.0)

    def result(self):
        dice = self.per_class()
        if self.class_id is None:
            return ops.mean(dice[1:])
        return dice[self.class_id]

    def reset_state(self):
        self.intersection.assign(ops.zeros((self.num_classes,), "float32"))
        self.total.assign(ops.zeros((self.num_classes,), "float32"))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "class_id": self.class_id})
        return config


def dice_metrics(class_names: Sequence[str], *, include_background: bool = False) -> list[DiceScore]:
    """One :class:`DiceScore` per class named ``dice_<name>``, then ``dice_mean``.

    With ``model.compile(metrics=dice_metrics(ds.class_names))`` the ``fit``
    logs show ``val_dice_Anterior``, ``val_dice_Posterior`` and
    ``val_dice_mean`` (mean over the foreground classes).

    Parameters
    ----------
    class_names : sequence of str
        Names of labels ``0 .. C-1`` (``C >= 2``); spaces become ``_``.
    include_background : bool
        Also report ``dice_<class_names[0]>``.
    """
    names = [str(n).strip().replace(" ", "_") for n in class_names]
    first = 0 if include_background else 1
    metrics = [DiceScore(len(names), class_id=i, name=f"dice_{names[i]}")
               for i in range(first, len(names))]
    metrics.append(DiceScore(len(names), class_id=None, name="dice_mean"))
    return metrics
