"""Uncertainty, calibration and out-of-distribution scores of segmentation probabilities (NumPy/SciPy only).

Everything here works on probability maps, whatever model made them:

* **Per-voxel uncertainty** of one prediction (:func:`predictive_entropy`) and of
  an ensemble of N predictions, from test-time augmentation or Monte-Carlo
  dropout (:func:`mutual_information`: the part of the entropy that comes from
  the passes disagreeing).
* **A per-case uncertainty score** (:func:`case_uncertainty`): the expected
  number of wrongly labelled voxels near the predicted structure, under the
  model's own probabilities, per predicted foreground voxel. It estimates how far Dice falls below 1 if the
  probabilities are calibrated.
* **Calibration** over the voxels that matter (:func:`near_structure_mask`),
  :func:`reliability_curve`, :func:`expected_calibration_error` and
  temperature scaling (:func:`fit_temperature`, :func:`apply_temperature`).
* **Out-of-distribution (OOD) score** of a whole case (:func:`case_statistics`,
  :func:`fit_ood`, :func:`ood_score`): how far the case's statistics lie from
  those of validation cases, in robust standard deviations.

Conventions
-----------
Probabilities are channels-last: ``(..., C)`` with C classes summing to 1 (a
one-channel sigmoid map ``(..., 1)`` is read as two classes ``[1 - p, p]``).
Entropies are in **nats** (natural logarithm), so the entropy of C equally
likely classes is ``log(C)`` (1.10 for C = 3). ``0 * log 0 = 0``.

Temperature scaling (Guo et al., *On calibration of modern neural networks*,
ICML 2017) divides the logits ``z`` by a positive scalar T before the softmax.
Only probabilities are needed: ``log p = z - logsumexp(z)`` differs from ``z``
by a constant per voxel, so ``softmax(log p / T) = softmax(z / T)``. T > 1
softens over-confident predictions, T < 1 sharpens; the argmax (the label map)
never changes.

Expected calibration error (ECE), as used in this package: top-label
confidence ``max_c p_c`` of each voxel, ``n_bins`` equal-width bins on [0, 1]
(bin ``b`` holds confidences in ``(b/n, (b+1)/n]``, the first bin also holds
0), and ``ECE = sum_b (n_b / N) |accuracy_b - confidence_b|``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg_tf.errors import ConfigError, DataError

__all__ = [
    "predictive_entropy",
    "mutual_information",
    "case_uncertainty",
    "near_structure_mask",
    "reliability_curve",
    "expected_calibration_error",
    "apply_temperature",
    "fit_temperature",
    "negative_log_likelihood",
    "case_statistics",
    "fit_ood",
    "ood_score",
    "ood_components",
    "corrupt_volume",
    "CORRUPTIONS",
    "read_calibration",
    "write_calibration",
    "check_temperature",
    "CALIBRATION_FILE",
    "ECE_BINNING",
]

#: File name of a run folder's calibration (temperature and OOD threshold).
CALIBRATION_FILE = "calibration.json"

#: The ECE binning of :func:`expected_calibration_error` with its default ``n_bins``, in words.
ECE_BINNING = ("top-label confidence, 15 equal-width bins on [0, 1], |accuracy - confidence| per bin "
               "weighted by its share of voxels")

_TINY = np.finfo(np.float32).tiny


# --------------------------------------------------------------------------- helpers
def _as_classes(probs: np.ndarray) -> np.ndarray:
    """float64 ``(..., C)`` probabilities with C >= 2 (one sigmoid channel becomes ``[1 - p, p]``)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 1:
        raise ValueError(f"probabilities must have a class axis last, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities hold NaN or infinite values")
    if p.shape[-1] == 1:
        p = np.concatenate([1.0 - p, p], axis=-1)
    return p


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float; :class:`ConfigError` (key ``temperature``) unless finite and > 0."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ConfigError("temperature", f"must be a positive number, got {temperature!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise ConfigError("temperature", f"must be a positive finite number, got {temperature!r}")
    return t


# --------------------------------------------------------------------------- per-voxel uncertainty
def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy ``-sum_c p_c log p_c`` (nats) of each voxel's class distribution.

    Parameters
    ----------
    probs : np.ndarray
        ``(..., C)`` probabilities (one channel: sigmoid).

    Returns
    -------
    np.ndarray
        float32 ``(...)``: 0 for a one-hot voxel, ``log(C)`` for a uniform one.
    """
    p = _as_classes(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.maximum(-terms.sum(axis=-1), 0.0).astype(np.float32)


def mutual_information(stacked: np.ndarray) -> np.ndarray:
    """Mutual information between the prediction and the ensemble member (BALD), per voxel, in nats.

    ``MI = H(mean_n p_n) - mean_n H(p_n)``: the entropy of the averaged
    prediction minus the average entropy of the passes. It is 0 when all
    passes agree (whatever their own entropy) and grows with their
    disagreement ("epistemic" uncertainty; the second term is the
    "aleatoric" part).

    Parameters
    ----------
    stacked : np.ndarray
        ``(N, ..., C)`` probabilities of N >= 2 passes (TTA or MC dropout).

    Returns
    -------
    np.ndarray
        float32 ``(...)``, >= 0.
    """
    s = np.asarray(stacked)
    if s.ndim < 2:
        raise ValueError(f"stacked probabilities must be (N, ..., C), got shape {s.shape}")
    if s.shape[0] < 2:
        raise ValueError(f"mutual information needs N >= 2 passes, got N = {s.shape[0]}")
    mean_entropy = np.mean([predictive_entropy(p) for p in s], axis=0)
    return np.maximum(predictive_entropy(s.mean(axis=0)) - mean_entropy, 0.0).astype(np.float32)


def case_uncertainty(probs: np.ndarray, *, radius: int | None = 3) -> float:
    """Expected mislabelled voxels near the structure per predicted foreground voxel: a per-case score.

    ``U = sum_{v in N} (1 - max_c p_vc) / max(1, #{v: argmax_c p_vc != 0})`` where ``N`` is the
    neighbourhood of the predicted foreground (:func:`near_structure_mask` of the argmax with
    ``radius``; the whole volume with ``radius=None``). The numerator is the number of voxels whose
    argmax label is wrong, expected under the model's own probabilities; dividing by the predicted
    structure's size makes cases of different sizes comparable. For calibrated probabilities
    ``Dice ~ 1 - U / 2`` roughly (each error costs about half a voxel of Dice's mean size), so U
    should rise as Dice falls. The neighbourhood keeps the far background out: after temperature
    scaling its many voxels at 0.99 would add up to more than the boundary errors.

    Parameters
    ----------
    probs : np.ndarray
        ``(..., C)`` probabilities, class 0 = background.
    radius : int or None
        Neighbourhood of the predicted foreground in voxels (chessboard distance).

    Returns
    -------
    float
        >= 0 (dimensionless); 0 when nothing is predicted.
    """
    p = _as_classes(probs)
    labels = p.argmax(axis=-1)
    errors = 1.0 - p.max(axis=-1)
    if radius is not None:
        errors = errors[near_structure_mask(labels, radius=radius)]
    return float(np.sum(errors)) / max(1, int(np.count_nonzero(labels)))


# --------------------------------------------------------------------------- calibration
def near_structure_mask(*masks: np.ndarray, radius: int = 3) -> np.ndarray:
    """Voxels near the structure: the union of the foreground of ``masks``, dilated by ``radius`` voxels.

    Calibration measured over a whole volume is dominated by easy background
    (95 % or more of the voxels, predicted at probability ~1 and right), so a
    badly calibrated model can still show a tiny ECE. This mask keeps the
    voxels where the labels are in question: the reference and the
    prediction and a band around them.

    Parameters
    ----------
    *masks : np.ndarray
        Label maps or boolean masks of one shape (typically the reference and
        the prediction); non-zero is foreground.
    radius : int
        Dilation in voxels with a full 3x3(x3) neighbourhood, i.e. every voxel
        within chessboard distance ``radius`` of a foreground voxel (0: the
        union itself).

    Returns
    -------
    np.ndarray
        bool, the masks' shape.
    """
    if not masks:
        raise ValueError("give at least one mask")
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    shape = np.shape(masks[0])
    union = np.zeros(shape, dtype=bool)
    for m in masks:
        if np.shape(m) != shape:
            raise ValueError(f"masks have different shapes: {shape} and {np.shape(m)}")
        union |= np.asarray(m) != 0
    if radius == 0 or not union.any():
        return union
    structure = np.ones((3,) * union.ndim, dtype=bool)
    return ndimage.binary_dilation(union, structure=structure, iterations=int(radius))


def _flatten(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    p = _as_classes(probs)
    y = np.asarray(labels)
    if y.shape != p.shape[:-1]:
        raise ValueError(f"labels of shape {y.shape} do not match probabilities of shape {p.shape}")
    if y.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[-1]):
        raise ValueError(f"labels must lie in [0, {p.shape[-1] - 1}] (the classes of the probabilities), "
                         f"got values {int(y.min())}..{int(y.max())}")
    p = p.reshape(-1, p.shape[-1])
    y = y.reshape(-1)
    if mask is not None:
        m = np.asarray(mask, dtype=bool).reshape(-1)
        if m.size != y.size:
            raise ValueError(f"mask has {m.size} voxels, the labels {y.size}")
        p, y = p[m], y[m]
    if y.size == 0:
        raise ValueError("no voxels to evaluate (empty region)")
    return p, y


def reliability_curve(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, *,
                      n_bins: int = 15) -> dict[str, np.ndarray]:
    """Data of a reliability diagram: accuracy against confidence in equal-width bins.

    Parameters
    ----------
    probs : np.ndarray
        ``(..., C)`` probabilities; or already flattened ``(N, C)``.
    labels : np.ndarray
        Integer reference labels ``(...)`` (or ``(N,)``).
    mask : np.ndarray of bool, optional
        Voxels to use (e.g. :func:`near_structure_mask`); default all.
    n_bins : int
        Equal-width bins on [0, 1] (see the module docstring).

    Returns
    -------
    dict
        ``edges`` (n_bins + 1,), ``count`` (n_bins,) voxels per bin,
        ``confidence`` and ``accuracy`` (n_bins,) means per bin (NaN for an
        empty bin), ``ece`` (float).
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p, y = _flatten(probs, labels, mask)
    conf = p.max(axis=-1)
    correct = (p.argmax(axis=-1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    index = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    gaps = np.where(count > 0, np.abs(accuracy - confidence), 0.0)
    ece = float(np.sum(count / count.sum() * gaps))
    return {"edges": edges, "count": count, "confidence": confidence, "accuracy": accuracy, "ece": ece}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, *,
                               n_bins: int = 15) -> float:
    """Expected calibration error (top-label, ``n_bins`` equal-width bins; see the module docstring).

    Returns
    -------
    float
        In [0, 1]; 0 for perfectly calibrated probabilities (up to sampling noise).
    """
    return reliability_curve(probs, labels, mask, n_bins=n_bins)["ece"]


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities ``softmax(log p / T)`` (= ``softmax(z / T)`` for logits z).

    Parameters
    ----------
    probs : np.ndarray
        ``(..., C)`` probabilities; one channel is a sigmoid (then ``sigmoid(logit(p) / T)``).
    temperature : float
        T > 0; 1 returns the input unchanged (as float32).

    Returns
    -------
    np.ndarray
        float32, the input's shape; the argmax is unchanged.
    """
    t = check_temperature(temperature)
    p = np.asarray(probs, dtype=np.float32)
    if t == 1.0:
        return p
    sigmoid = p.shape[-1] == 1
    logp = np.log(np.maximum(_as_classes(p), _TINY)) / t
    logp -= logp.max(axis=-1, keepdims=True)
    out = np.exp(logp)
    out /= out.sum(axis=-1, keepdims=True)
    return (out[..., 1:] if sigmoid else out).astype(np.float32)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, *,
                            temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats per voxel) of the labels under temperature-scaled probabilities."""
    p, y = _flatten(probs, labels, mask)
    return _nll(np.log(np.maximum(p, _TINY)), y, check_temperature(temperature))


def _nll(logp: np.ndarray, y: np.ndarray, t: float) -> float:
    z = logp / t
    zmax = z.max(axis=-1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=-1))
    return float(np.mean(lse - z[np.arange(y.size), y]))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, *,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the negative log-likelihood of ``labels`` (fit on validation cases only).

    Minimises :func:`negative_log_likelihood` over ``log T`` with
    :func:`scipy.optimize.minimize_scalar` (bounded). Concatenate the voxels of
    several cases first (``probs`` ``(N, C)``, ``labels`` ``(N,)``).

    Parameters
    ----------
    probs : np.ndarray
        ``(..., C)`` probabilities at T = 1.
    labels : np.ndarray
        Integer reference labels ``(...)``.
    mask : np.ndarray of bool, optional
        Voxels to fit on (e.g. :func:`near_structure_mask`).
    bounds : (float, float)
        Search interval of T.

    Returns
    -------
    float
        T > 1 for over-confident probabilities, < 1 for under-confident ones,
        about 1 for calibrated ones.
    """
    from scipy.optimize import minimize_scalar

    lo, hi = (check_temperature(b) for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must be increasing, got {bounds}")
    p, y = _flatten(probs, labels, mask)
    logp = np.log(np.maximum(p, _TINY))
    result = minimize_scalar(lambda s: _nll(logp, y, math.exp(s)), bounds=(math.log(lo), math.log(hi)),
                             method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


# --------------------------------------------------------------------------- out-of-distribution score
#: Quantile levels (in %) of the normalised intensities compared by the OOD score.
QUANTILE_LEVELS = (1, 5, 10, 25, 50, 75, 90, 95, 99)

#: OOD features: name -> (what it measures, which direction is unusual).
OOD_FEATURES = {
    "entropy_near": ("mean predictive entropy (nats) within `radius` voxels of the predicted foreground",
                     "high"),
    "log_foreground": ("log10 of the predicted foreground share of the volume", "both"),
    "intensity_distance": ("mean |quantile - reference quantile| of the normalised intensities", "high"),
}


def case_statistics(image: np.ndarray, probs: np.ndarray, *, radius: int = 3,
                    levels: Sequence[float] = QUANTILE_LEVELS) -> dict:
    """Statistics of one predicted case that the OOD score compares with validation cases.

    Parameters
    ----------
    image : np.ndarray
        The normalised model input ``(X, Y, Z)`` (first channel used if 4D); only
        its intensity quantiles are used, so it may be on another grid than ``probs``.
    probs : np.ndarray
        ``(X, Y, Z, C)`` predicted probabilities (at the calibrated temperature).
    radius : int
        Neighbourhood of the predicted foreground (voxels, chessboard) where
        the entropy is averaged; the whole volume if nothing is predicted.
    levels : sequence of float
        Quantile levels in %.

    Returns
    -------
    dict
        ``entropy_near`` (float), ``log_foreground`` (float; log10 of the
        foreground share, at least -7) and ``quantiles`` (list of floats).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 4:
        img = img[..., 0]
    p = _as_classes(probs)
    if p.ndim != img.ndim + 1:
        raise ValueError(f"image of shape {img.shape} and probabilities of shape {p.shape} do not match")
    labels = p.argmax(axis=-1)
    entropy = predictive_entropy(p)
    roi = near_structure_mask(labels, radius=radius)
    entropy_near = float(entropy[roi].mean() if roi.any() else entropy.mean())
    share = np.count_nonzero(labels) / labels.size
    return {"entropy_near": entropy_near,
            "log_foreground": float(max(np.log10(share) if share > 0 else -7.0, -7.0)),
            "quantiles": [float(q) for q in np.percentile(img, list(levels))]}


def _features(stats: Mapping, reference_quantiles: Sequence[float]) -> dict[str, float]:
    q = np.asarray(stats["quantiles"], dtype=np.float64)
    ref = np.asarray(reference_quantiles, dtype=np.float64)
    if q.shape != ref.shape:
        raise ValueError(f"{q.size} quantiles given, the reference has {ref.size}")
    return {"entropy_near": float(stats["entropy_near"]),
            "log_foreground": float(stats["log_foreground"]),
            "intensity_distance": float(np.mean(np.abs(q - ref)))}


def fit_ood(stats: Sequence[Mapping], *, rule: str = "max", radius: int = 3,
            levels: Sequence[float] = QUANTILE_LEVELS) -> dict:
    """Fit the OOD score to validation cases: reference statistics and a threshold.

    Each feature of :data:`OOD_FEATURES` is turned into a robust z-score,
    ``(f - median) / scale`` with ``scale = 1.4826 * MAD`` (the standard
    deviation for normal data), floored at 10 % of the feature's typical
    magnitude so that a handful of very similar cases does not make every new
    case look alien. The case's score is the largest z over the features,
    counting only the unusual direction (high entropy, high intensity
    distance, a foreground much larger or smaller than usual).

    Parameters
    ----------
    stats : sequence of dict
        :func:`case_statistics` of the validation cases (at least 3).
    rule : {"max", "p95"}
        Threshold: the largest score of these cases, or their 95th percentile
        (flags about 5 % of in-distribution cases by construction).
    radius, levels
        As given to :func:`case_statistics` (stored for :func:`ood_score`'s caller).

    Returns
    -------
    dict
        JSON-ready: ``reference_quantiles``, ``median``, ``scale``,
        ``threshold``, ``rule`` (in words), ``radius``, ``levels``, ``scores``
        (of the fitting cases).
    """
    if len(stats) < 3:
        raise ValueError(f"fit_ood needs at least 3 validation cases, got {len(stats)}")
    if rule not in ("max", "p95"):
        raise ValueError(f"rule must be 'max' or 'p95', got {rule!r}")
    reference = np.mean([np.asarray(s["quantiles"], dtype=np.float64) for s in stats], axis=0)
    feats = [_features(s, reference) for s in stats]
    median, scale = {}, {}
    for name in OOD_FEATURES:
        values = np.array([f[name] for f in feats])
        med = float(np.median(values))
        mad = 1.4826 * float(np.median(np.abs(values - med)))
        typical = float(np.median(np.abs(values))) or 1.0
        median[name], scale[name] = med, max(mad, 0.1 * typical, 1e-6)
    model = {"reference_quantiles": [float(v) for v in reference], "median": median, "scale": scale,
             "radius": int(radius), "levels": [float(v) for v in levels]}
    scores = [ood_score(s, model) for s in stats]
    threshold = float(np.max(scores)) if rule == "max" else float(np.percentile(scores, 95))
    model.update(threshold=threshold, scores=[float(s) for s in scores],
                 rule=("largest score of the fitting cases" if rule == "max"
                       else "95th percentile of the fitting cases' scores"))
    return model


def ood_components(stats: Mapping, ood: Mapping) -> dict[str, float]:
    """Robust z of each OOD feature of one case (unusual direction only; see :func:`fit_ood`)."""
    try:
        feats = _features(stats, ood["reference_quantiles"])
        out = {}
        for name, (_, direction) in OOD_FEATURES.items():
            z = (feats[name] - ood["median"][name]) / ood["scale"][name]
            out[name] = float(abs(z) if direction == "both" else max(z, 0.0))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed OOD reference (missing {exc})") from None
    return out


def ood_score(stats: Mapping, ood: Mapping) -> float:
    """OOD score of one case: the largest robust z of its features (see :func:`fit_ood`)."""
    return max(ood_components(stats, ood).values())


# --------------------------------------------------------------------------- deliberately wrong inputs
#: Kinds of :func:`corrupt_volume`, with what each imitates.
CORRUPTIONS = {
    "flip_lr": "mirrored left-right (x): a hippocampus of the other side, not necessarily unusual",
    "flip_ap": "mirrored anterior-posterior (y): a wrong orientation in the header",
    "flip_si": "mirrored superior-inferior (z): upside down",
    "noise": "Gaussian noise with half the image's standard deviation added",
    "zoom": "anatomy twice as large in voxels (the spacing misread by a factor 2)",
    "ct_like": "a CT-like volume (air -1000 HU, soft tissue ~40 HU, a bone shell ~1000 HU)",
    "random": "uniform random intensities",
}


def corrupt_volume(data: np.ndarray, kind: str, *, seed: int = 0) -> np.ndarray:
    """A deliberately wrong version of a RAS image (raw intensities), same shape, for OOD checks.

    Parameters
    ----------
    data : np.ndarray
        ``(X, Y, Z)`` image in RAS voxel order, before normalisation.
    kind : str
        One of :data:`CORRUPTIONS`.
    seed : int
        Seeds the random parts.

    Returns
    -------
    np.ndarray
        float32 ``(X, Y, Z)``.
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"corrupt_volume takes an (X, Y, Z) image, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    if kind in ("flip_lr", "flip_ap", "flip_si"):
        return np.ascontiguousarray(np.flip(x, ("flip_lr", "flip_ap", "flip_si").index(kind)))
    if kind == "noise":
        return (x + rng.normal(scale=0.5 * float(x.std()), size=x.shape)).astype(np.float32)
    if kind == "zoom":
        big = ndimage.zoom(x, 2.0, order=1)
        start = [(b - n) // 2 for b, n in zip(big.shape, x.shape)]
        return np.ascontiguousarray(big[tuple(slice(s0, s0 + n) for s0, n in zip(start, x.shape))])
    if kind == "ct_like":
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in x.shape], indexing="ij"))
        r = np.sqrt((grid ** 2).sum(axis=0))
        out = np.full(x.shape, -1000.0, dtype=np.float32)
        out[r < 0.95] = 1000.0
        out[r < 0.85] = 40.0
        return (out + rng.normal(scale=10.0, size=x.shape)).astype(np.float32)
    if kind == "random":
        return rng.uniform(float(x.min()), float(x.max()), size=x.shape).astype(np.float32)
    raise ValueError(f"unknown corruption {kind!r}: expected one of {', '.join(CORRUPTIONS)}")


# --------------------------------------------------------------------------- calibration.json
def write_calibration(run_dir: str | os.PathLike, calibration: Mapping, *, overwrite: bool = False) -> Path:
    """Write ``run_dir/calibration.json``; refuses to replace one unless ``overwrite``."""
    from medseg_tf.errors import OverwriteError

    path = Path(run_dir) / CALIBRATION_FILE
    if path.exists() and not overwrite:
        raise OverwriteError(f"{path}: already exists; pass --overwrite to replace it")
    check_temperature(calibration.get("temperature"))
    path.write_text(json.dumps(calibration, indent=1) + "\n")
    return path


def read_calibration(run_dir: str | os.PathLike) -> dict | None:
    """``run_dir/calibration.json`` as a dict, or None when the file is absent.

    Raises
    ------
    DataError
        The file is not JSON, or its ``temperature`` is not a positive number,
        or its ``ood`` entry lacks a threshold.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(path, "must hold a JSON object")
    try:
        check_temperature(data.get("temperature"))
    except ConfigError as exc:
        raise DataError(path, f"'temperature' {exc.problem}") from None
    ood = data.get("ood")
    if ood is not None:
        needed = ("threshold", "median", "scale", "reference_quantiles")
        missing = [k for k in needed if not isinstance(ood, dict) or k not in ood]
        if missing:
            raise DataError(path, f"'ood' lacks {', '.join(missing)}")
        for key in ("median", "scale"):
            lacking = sorted(set(OOD_FEATURES) - set(ood[key] if isinstance(ood[key], dict) else ()))
            if lacking:
                raise DataError(path, f"'ood.{key}' lacks {', '.join(lacking)}")
        levels = ood.get("levels", QUANTILE_LEVELS)
        if not isinstance(ood["reference_quantiles"], list) or len(ood["reference_quantiles"]) != len(levels):
            raise DataError(path, f"'ood.reference_quantiles' must be a list of {len(levels)} numbers, one per "
                                  "quantile level")
    return data
