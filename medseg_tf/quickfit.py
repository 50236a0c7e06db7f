"""Train a small 2D U-Net on in-memory arrays: multi-channel inputs, softmax labels or sigmoid regions.

:mod:`medseg_tf.training` trains from an MSD folder with one input channel and
softmax labels. The applications of notebook 08 need two more things, kept
here so that the notebook stays thin:

* inputs with several channels (four MRI sequences, three colour channels);
* *multi-label* outputs: one sigmoid per nested region (whole tumour, tumour
  core, enhancing tumour), trained with binary cross-entropy + soft Dice per
  region (:func:`region_loss`), as nnU-Net trains BraTS.

Everything is seeded: the same arrays, seed and steps give the same model.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops
from medseg_tf.settings import progress_bar as tqdm

from medseg_tf import losses, models
from medseg_tf.schedules import make_optimizer

__all__ = ["slices_from_volumes", "region_loss", "tiny_unet", "fit_arrays"]


def slices_from_volumes(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, axis: int = 2,
                        empty_fraction: float = 0.25, divisor: int = 8, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """2D training slices from volumes: every slice with foreground, plus a share of empty ones.

    Parameters
    ----------
    images : sequence of np.ndarray
        Normalised volumes ``(X, Y, Z, C)`` (or ``(X, Y, Z)``: one channel).
    labels : sequence of np.ndarray
        Label maps ``(X, Y, Z)`` or region masks ``(X, Y, Z, R)``, paired with ``images``.
    axis : int
        Slicing axis (2: axial slices of a RAS volume).
    empty_fraction : float
        Slices without foreground kept, as a fraction of the slices with foreground
        (so the network also sees what "no tumour" looks like).
    divisor : int
        In-plane sizes are padded to a common multiple of it (``2**depth`` of the U-Net);
        images with their minimum, labels with 0.
    seed : int
        Chooses the empty slices.

    Returns
    -------
    x : np.ndarray
        float32 ``(N, H, W, C)``.
    y : np.ndarray
        ``(N, H, W)`` int32 labels or ``(N, H, W, R)`` float32 regions.
    """
    if len(images) != len(labels) or not images:
        raise ValueError(f"need as many labels as images (>= 1), got {len(images)} and {len(labels)}")
    rng = np.random.default_rng([seed, 8])
    xs, ys = [], []
    for image, label in zip(images, labels):
        image = np.asarray(image, np.float32)
        image = image[..., None] if image.ndim == 3 else image
        label = np.asarray(label)
        if image.shape[:3] != label.shape[:3]:
            raise ValueError(f"image shape {image.shape} and label shape {label.shape} differ")
        x = np.moveaxis(image, axis, 0)
        y = np.moveaxis(label, axis, 0)
        has_fg = np.array([np.any(s > 0) for s in y])
        fg, empty = np.flatnonzero(has_fg), np.flatnonzero(~has_fg)
        n_empty = min(len(empty), int(round(empty_fraction * max(len(fg), 1))))
        keep = np.sort(np.concatenate([fg, rng.choice(empty, n_empty, replace=False)])).astype(int)
        xs.append((x[keep], float(image.min())))
        ys.append(y[keep])
    h = max(a.shape[1] for a, _ in xs)
    w = max(a.shape[2] for a, _ in xs)
    h, w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    out_x, out_y = [], []
    for (x, fill), y in zip(xs, ys):
        px = [(0, 0), (0, h - x.shape[1]), (0, w - x.shape[2]), (0, 0)]
        out_x.append(np.pad(x, px, constant_values=fill))
        out_y.append(np.pad(y, px[: y.ndim], constant_values=0))
    x = np.concatenate(out_x).astype(np.float32)
    y = np.concatenate(out_y)
    return x, (y.astype(np.int32) if y.ndim == 3 else y.astype(np.float32))


def region_loss(y_true, y_pred, *, smooth: float = 1e-5):
    """Binary cross-entropy + (1 - mean soft Dice over regions), for sigmoid outputs.

    Parameters
    ----------
    y_true : tensor ``(B, *spatial, R)``
        Region masks (0/1), e.g. from :func:`medseg_tf.regions.labels_to_regions`.
    y_pred : tensor ``(B, *spatial, R)``
        Sigmoid probabilities.

    Returns
    -------
    scalar tensor
        Soft Dice is computed per region over the whole batch (batch Dice, as
        nnU-Net), so a region absent from one slice does not give 0/0.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.clip(ops.cast(y_pred, "float32"), losses.EPSILON, 1.0 - losses.EPSILON)
    bce = -ops.mean(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
    axes = tuple(range(len(y_pred.shape) - 1))
    inter = ops.sum(y_true * y_pred, axis=axes)
    denom = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return bce + 1.0 - ops.mean(dice)


def tiny_unet(channels: int, outputs: int, *, head: str = "softmax", depth: int = 3, base_filters: int = 8,
              seed: int = 0) -> keras.Model:
    """A small 2D U-Net (:func:`medseg_tf.models.unet`) for quick training on a CPU, seeded weights.

    Parameters
    ----------
    channels : int
        Input channels.
    outputs : int
        Classes (softmax, background included) or regions (sigmoid).
    head : {"softmax", "sigmoid"}
    depth, base_filters : int
        U-Net size (inputs must be divisible by ``2**depth``).
    seed : int
        Seeds the weight initialisation.
    """
    keras.utils.set_random_seed(int(seed))
    return models.unet((None, None, int(channels)), int(outputs), depth=depth, base_filters=base_filters,
                       head=head, name=f"unet_{head}")


def fit_arrays(model: keras.Model, x: np.ndarray, y: np.ndarray, *, steps: int, batch_size: int = 16,
               learning_rate: float = 3e-3, loss=None, seed: int = 0, progress: bool = True,
               desc: str = "training") -> list[float]:
    """Train ``model`` for ``steps`` Adam steps on random batches of ``(x, y)``.

    Parameters
    ----------
    model : keras.Model
        Softmax (``y`` int labels ``(N, H, W)``) or sigmoid (``y`` regions ``(N, H, W, R)``) model.
    x : np.ndarray
        float32 ``(N, H, W, C)``.
    y : np.ndarray
        Labels or regions, see ``model``.
    steps : int
        Optimiser steps (each on ``batch_size`` samples drawn without replacement
        within a pass, passes reshuffled, seeded).
    batch_size : int
    learning_rate : float
        Adam learning rate.
    loss : callable, optional
        Default: :class:`medseg_tf.losses.DiceCELoss` for int labels,
        :func:`region_loss` for float regions.
    seed : int
        Seeds the batch order.
    progress : bool
        Show a tqdm bar with the running loss.
    desc : str
        Bar label.

    Returns
    -------
    list of float
        The loss of every step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples, y {len(y)}")
    if loss is None:
        loss = losses.DiceCELoss() if np.issubdtype(np.asarray(y).dtype, np.integer) else region_loss
    model.compile(optimizer=make_optimizer("adam", learning_rate), loss=loss)
    model.optimizer.build(model.trainable_variables)  # before the first step's trace (else it is traced twice)
    rng = np.random.default_rng([seed, 9])
    order: list[int] = []
    history = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0)
    for _ in bar:
        if len(order) < batch_size:
            order.extend(rng.permutation(len(x)).tolist())
        idx, order = order[:batch_size], order[batch_size:]
        value = model.train_on_batch(x[idx], y[idx])
        history.append(float(value if np.ndim(value) == 0 else value[0]))
        bar.set_postfix(loss=f"{history[-1]:.3f}", refresh=False)
    return history
