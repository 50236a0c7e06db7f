"""One run spec: every setting that training and prediction share, validated once (NumPy only).

A :class:`RunSpec` describes a run: the data, the network, the training recipe and how the trained
model predicts. Training writes it as ``config.json`` in the run folder; prediction reads the same
file through :meth:`RunSpec.load`, so a setting added here reaches training, the input pipeline and
prediction from this one place (nnU-Net's plans file and ``ConfigurationManager`` play the same role).
Values every consumer needs are derived here, once, as properties: :attr:`RunSpec.depth`,
:attr:`~RunSpec.divisor`, :attr:`~RunSpec.input_channels`, :attr:`~RunSpec.mirror_axes` and the
default patch size.

This module imports neither TensorFlow nor Keras, so tools and TF-free prediction can read a run folder.
A spec also reads like the dict of its ``config.json`` (``spec["dims"]``, ``spec.get("overlap")``,
``{**spec}``), so code written for the JSON file keeps working.

>>> spec = RunSpec(dims=2, context_slices=2, model={"depth": 3})
>>> spec.input_channels, spec.divisor, spec.patch_size, spec.mirror_axes
(5, 8, (64, 64), (0, 1))
>>> spec["dims"], spec.replace(augment={"flips": [0]}).mirror_axes
(2, (0,))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg_tf.errors import ConfigError, DataError

__all__ = [
    "RunSpec",
    "SCHEDULES",
    "OPTIMIZER_NAMES",
    "LOSS_NAMES",
    "NORMALIZATIONS",
    "NORMS",
    "UNET_KEYWORDS",
    "UNET_DEFAULT_DEPTH",
    "DEFAULT_PATCH",
    "CHECKPOINTS",
    "flip_axes",
    "round_up",
    "check_context_slices",
    "slices_per_sample",
]

#: Learning-rate schedules (``medseg_tf.training.make_schedule``).
SCHEDULES = ("constant", "cosine", "poly")
#: Optimizers (``medseg_tf.training.make_optimizer``; ``sgd`` is nnU-Net's Nesterov SGD).
OPTIMIZER_NAMES = ("adam", "adamw", "sgd", "rmsprop")
#: Losses (``medseg_tf.losses.LOSSES``).
LOSS_NAMES = ("dice", "dice_ce", "ce", "focal", "tversky")
#: Intensity normalisations (``medseg_tf.preprocessing.normalize``).
NORMALIZATIONS = ("zscore", "none")
#: Normalisation layers of the U-Net (``medseg_tf.models.unet(norm=...)``).
NORMS = ("batch", "instance", "group")
#: Keyword arguments of :func:`medseg_tf.models.unet` a spec's ``model`` may set.
UNET_KEYWORDS = ("depth", "base_filters", "kernel_size", "norm", "activation", "residual", "attention",
                 "deep_supervision", "dropout", "head", "skips", "max_filters", "name")
#: The U-Net depth when ``model`` does not set one (the default of :func:`medseg_tf.models.unet`).
UNET_DEFAULT_DEPTH = 4
#: Which model a run keeps: the epoch with the best validation Dice, or the last epoch.
CHECKPOINTS = ("best", "last")
#: Training patch (voxels) when ``patch_size`` is not given.
DEFAULT_PATCH = {2: (64, 64), 3: (48, 64, 48)}


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``.

    >>> round_up(33, 16), round_up(32, 16)
    (48, 32)
    """
    return int(math.ceil(n / multiple) * multiple)


def flip_axes(flips: bool | Sequence[int], ndim: int) -> tuple[int, ...]:
    """Spatial axes mirrored by ``random_augment(..., flips=flips)`` for ``ndim`` spatial axes.

    >>> flip_axes(True, 3), flip_axes(False, 3), flip_axes([0], 2)
    ((0, 1, 2), (), (0,))
    """
    if isinstance(flips, bool):
        return tuple(range(ndim)) if flips else ()
    try:
        axes = tuple(sorted({int(a) for a in flips}))
    except (TypeError, ValueError):
        raise ConfigError("augment", f"flips must be true, false or a list of spatial axes, got {flips!r}") from None
    if any(a < 0 or a >= ndim for a in axes):
        raise ConfigError("augment", f"flips={list(flips)}: spatial axes must be in 0..{ndim - 1}")
    return axes


def check_context_slices(value, dims: int = 2) -> int:
    """The number of neighbouring slices on each side of a "2.5D" sample, validated (0: one slice).

    >>> check_context_slices(2), slices_per_sample(2)
    (2, 5)
    """
    k = _as_int("context_slices", value)
    if k < 0 or (k and dims != 2):
        raise ConfigError("context_slices", f"must be >= 0, and 0 unless dims=2; got {value!r} with dims={dims}")
    return k


def slices_per_sample(context_slices: int) -> int:
    """Slices stacked as channels for one 2D sample: the slice and ``context_slices`` on each side."""
    return 2 * int(context_slices) + 1


def _as_int(name: str, value) -> int:
    try:
        ok = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(name, f"must be an integer, got {value!r}")
    return int(value)


def _as_float(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if isinstance(value, bool) or not np.isfinite(out):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    return out


def name_and_kwargs(what: str, spec, known: Sequence[str]) -> tuple[str, dict]:
    """Split a ``"name"`` or ``{"name": ..., **kwargs}`` setting (loss, optimizer); ConfigError if unknown."""
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping) and "name" in spec:
        kwargs = dict(spec)
        name = str(kwargs.pop("name"))
    else:
        raise ConfigError(what, f"must be a name or {{\"name\": ..., **kwargs}}, got {spec!r}")
    name = name.strip().lower()
    if name not in known:
        raise ConfigError(what, f"{name!r} is unknown; expected one of {', '.join(known)}")
    return name, kwargs


def _check_unet_kwargs(model_kwargs: Mapping) -> None:
    """Refuse unknown U-Net keywords and impossible sizes where the spec is read, not deep in Keras."""
    unknown = sorted(set(model_kwargs) - set(UNET_KEYWORDS))
    if unknown:
        raise ConfigError("model", f"unknown U-Net keyword(s) {', '.join(map(repr, unknown))}; "
                                   f"expected some of {', '.join(UNET_KEYWORDS)}")
    for key in ("depth", "base_filters", "max_filters", "kernel_size"):
        if model_kwargs.get(key) is not None:
            try:
                value = _as_int(key, model_kwargs[key])
            except ConfigError:
                raise ConfigError("model", f"{key} must be an integer, got {model_kwargs[key]!r}") from None
            low = 0 if key == "depth" else 1  # depth 0: divisor 1, a model that never pools (not models.unet)
            if value < low:
                raise ConfigError("model", f"{key} must be >= {low}, got {value}")
    norm = model_kwargs.get("norm")
    if norm is not None and norm not in NORMS:
        raise ConfigError("model", f"norm must be one of {', '.join(NORMS)} or null, got {norm!r}")


@dataclass
class RunSpec(Mapping):
    """Everything that defines a run: data, network, training recipe and prediction (``config.json``).

    Attributes
    ----------
    data : str
        ``"phantom"`` (generated under ``settings.phantom_dir()`` if missing),
        ``"hippocampus"`` (``settings.hippocampus_dir()``, i.e.
        ``MEDSEG_HIPPOCAMPUS_DIR``) or the path of an MSD folder.
    dims : int
        2 (slices, 2D U-Net) or 3 (patches, 3D U-Net).
    slice_axis : int
        Axis (0, 1, 2 of the RAS volume) the 2D slices are taken along.
    context_slices : int
        2D only: "2.5D" input with this many neighbouring slices on each side
        as extra channels (the model gets ``2 * context_slices + 1`` input
        channels and predicts the middle slice); 0: one slice.
    patch_size : tuple of int
        Training crop in voxels: 2 ints for 2D, 3 for 3D, each divisible by
        ``2**depth``. Not given: :data:`DEFAULT_PATCH`, ``(64, 64)`` / ``(48, 64, 48)``.
        3D prediction slides a window of this size over the volume.
    target_spacing : tuple of 3 floats or None
        Resample every case to this voxel spacing (mm) first; None keeps it.
    model : dict
        Keyword arguments of :func:`medseg_tf.models.unet` (``depth``,
        ``base_filters``, ``norm``, ...); ``input_shape``/``num_classes`` are set by the trainer.
    loss : str or dict
        A :data:`LOSS_NAMES` name, or ``{"name": ..., **kwargs}``.
    optimizer : str or dict
        ``"adam"``, ``"adamw"``, ``"sgd"`` (nnU-Net: Nesterov, momentum 0.99),
        ``"rmsprop"``, or ``{"name": ..., **kwargs}`` (e.g. ``clipnorm``).
    learning_rate : float
        Initial learning rate.
    schedule : str
        ``"constant"``, ``"cosine"`` (cosine decay to 0 over all steps) or
        ``"poly"`` (nnU-Net: ``lr * (1 - epoch / epochs) ** 0.9``, per epoch).
    epochs, steps_per_epoch : int
        An epoch is ``steps_per_epoch`` training batches, then one validation pass.
    batch_size : int
        Batch size per replica (the global batch is this times the number of replicas).
    val_fraction : float
        Share of the cases used for validation (split by case, seeded by ``seed``).
    seed : int
        Seeds the split, the weight initialisation and the data stream.
    foreground_fraction : float
        Share of training crops centred on a foreground voxel.
    augment : bool or dict
        Augmentation of training batches (dict: kwargs of
        :func:`medseg_tf.augment.random_augment`); its flips decide :attr:`mirror_axes`.
    max_cases : int or None
        Use only the first ``max_cases`` cases of the data set (before the split).
    max_train_cases : int or None
        Train on only this many of the split's training cases (a subset drawn with ``seed``; the
        validation cases are unchanged). Learning curves: with the same ``split_seed``, the subsets
        of one ``seed`` are nested (the 10 cases include the 5).
    split_seed : int or None
        Seed of the training/validation split (and of the folds); None: ``seed``. Fix it to vary
        ``seed`` (initialisation, data stream, subset) over the same validation cases.
    mixed_precision : "auto", bool or str
        Keras dtype policy of the model. ``"auto"``: ``mixed_float16`` with a GPU; on a CPU with
        native bfloat16 (AVX-512 BF16 or AMX) ``mixed_bfloat16`` for 3D and float32 for 2D (where
        bfloat16 cost Dice; :func:`medseg_tf.runtime.resolve_runtime` gives the measurement); float32
        on other CPUs. True: the device's mixed policy; False: float32; or the name itself
        (``"float32"``, ``"mixed_bfloat16"``, ``"mixed_float16"``). Weights are float32 in every case.
    jit_compile : "auto" or bool
        XLA compilation. ``"auto"``: on with a GPU, off on a CPU.
    out_dir : str or None
        Run folder. Relative paths are relative to ``settings.runs_dir()``
        (``MEDSEG_RUNS_DIR``, default ``<repo>/runs``); None gives
        ``<runs_dir>/<data name>_<dims>d``.
    normalization : str
        Intensity normalisation of every image, in training and prediction (:data:`NORMALIZATIONS`;
        ``"zscore"``: clip to the 0.5-99.5 % percentiles, then z-score per volume).
    overlap : float
        3D prediction: overlap of neighbouring sliding windows, in [0, 1).
    tta_axes : tuple of int or None
        Volume axes along which test-time augmentation may mirror the input. None: the axes training
        mirrored (see :attr:`mirror_axes`); give them only where the anatomy is mirror-symmetric.
    from_logits : bool
        The model outputs logits (softmax is applied at prediction) instead of probabilities.
    folds : int or None
        Cross-validation: split the cases into this many folds (seeded by ``seed``) and validate on fold
        :attr:`fold` (:func:`medseg_tf.datasets.kfold_split`); None: one split by ``val_fraction``.
    fold : int
        The fold validated on (0 .. folds - 1).
    checkpoint : str
        ``"best"``: keep the epoch with the best validation Dice (then the validation cases chose the
        model, and their Dice is optimistic); ``"last"``: keep the last epoch (the validation cases stay
        unbiased judges, as in nnU-Net's cross-validation).
    """

    data: str = "phantom"
    dims: int = 2
    slice_axis: int = 2
    context_slices: int = 0
    patch_size: tuple[int, ...] | None = None
    target_spacing: tuple[float, float, float] | None = None
    model: dict = field(default_factory=dict)
    loss: str | dict = "dice_ce"
    optimizer: str | dict = "adam"
    learning_rate: float = 1e-3
    schedule: str = "poly"
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 16
    val_fraction: float = 0.2
    seed: int = 0
    foreground_fraction: float = 0.5
    augment: bool | dict = True
    max_cases: int | None = None
    max_train_cases: int | None = None
    split_seed: int | None = None
    mixed_precision: str | bool = "auto"
    jit_compile: str | bool = "auto"
    out_dir: str | None = None
    normalization: str = "zscore"
    overlap: float = 0.5
    tta_axes: tuple[int, ...] | None = None
    from_logits: bool = False
    folds: int | None = None
    fold: int = 0
    checkpoint: str = "best"

    def __post_init__(self):
        self.data = str(self.data)
        self.dims = _as_int("dims", self.dims)
        if self.dims not in (2, 3):
            raise ConfigError("dims", f"must be 2 or 3, got {self.dims}")
        self.slice_axis = _as_int("slice_axis", self.slice_axis)
        if self.slice_axis not in (0, 1, 2):
            raise ConfigError("slice_axis", f"must be 0, 1 or 2, got {self.slice_axis}")
        self.context_slices = check_context_slices(self.context_slices, self.dims)
        if self.patch_size is None:
            self.patch_size = DEFAULT_PATCH[self.dims]
        if isinstance(self.patch_size, (str, bytes)) or not isinstance(self.patch_size, Sequence):
            raise ConfigError("patch_size", f"must be {self.dims} positive ints, got {self.patch_size!r}")
        self.patch_size = tuple(_as_int("patch_size", s) for s in self.patch_size)
        if len(self.patch_size) != self.dims or min(self.patch_size) < 1:
            raise ConfigError("patch_size", f"must be {self.dims} positive ints for dims={self.dims}, "
                                            f"got {self.patch_size}")
        if self.target_spacing is not None:
            self.target_spacing = tuple(_as_float("target_spacing", s) for s in self.target_spacing)
            if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
                raise ConfigError("target_spacing", f"must be 3 positive floats (mm) or None, "
                                                    f"got {self.target_spacing}")
        if not isinstance(self.model, Mapping):
            raise ConfigError("model", f"must be a dict of unet keyword arguments, got {self.model!r}")
        self.model = dict(self.model)
        for key in ("input_shape", "num_classes"):
            if key in self.model:
                raise ConfigError("model", f"key {key!r} is set by the trainer, remove it")
        if self.model.get("deep_supervision") and self.model.get("skips") is False:
            raise ConfigError("model", "deep_supervision=True needs skips=True")
        _check_unet_kwargs(self.model)
        if any(s % self.divisor for s in self.patch_size):
            raise ConfigError("patch_size", f"{self.patch_size} must be divisible by 2**depth = {self.divisor} "
                                            f"(the U-Net pools {self.depth} times): choose a patch_size "
                                            f"divisible by {self.divisor} or a smaller model depth")
        name_and_kwargs("loss", self.loss, LOSS_NAMES)
        name_and_kwargs("optimizer", self.optimizer, OPTIMIZER_NAMES)
        self.learning_rate = _as_float("learning_rate", self.learning_rate)
        if not self.learning_rate > 0:
            raise ConfigError("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            value = _as_int(name, getattr(self, name))
            if value < 1:
                raise ConfigError(name, f"must be >= 1, got {value}")
            setattr(self, name, value)
        self.val_fraction = _as_float("val_fraction", self.val_fraction)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        self.seed = _as_int("seed", self.seed)
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")
        self.foreground_fraction = _as_float("foreground_fraction", self.foreground_fraction)
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ConfigError("foreground_fraction", f"must be in [0, 1], got {self.foreground_fraction}")
        if not isinstance(self.augment, (bool, Mapping)):
            raise ConfigError("augment", f"must be true, false or a dict, got {self.augment!r}")
        if isinstance(self.augment, Mapping):
            self.augment = dict(self.augment)
        self.train_mirror_axes  # validates the flips of augment
        if self.max_cases is not None:
            self.max_cases = _as_int("max_cases", self.max_cases)
            if self.max_cases < 2:
                raise ConfigError("max_cases", f"must be >= 2 (train + validation) or None, got {self.max_cases}")
        if self.max_train_cases is not None:
            self.max_train_cases = _as_int("max_train_cases", self.max_train_cases)
            if self.max_train_cases < 1:
                raise ConfigError("max_train_cases", f"must be >= 1 or None, got {self.max_train_cases}")
        if self.split_seed is not None:
            self.split_seed = _as_int("split_seed", self.split_seed)
        for name in ("mixed_precision", "jit_compile"):
            value = getattr(self, name)
            if name == "mixed_precision" and value in ("float32", "mixed_bfloat16", "mixed_float16"):
                continue
            if value != "auto" and not isinstance(value, bool):
                extra = ", \"float32\", \"mixed_bfloat16\", \"mixed_float16\"" * (name == "mixed_precision")
                raise ConfigError(name, f"must be \"auto\", true, false{extra}, got {value!r}")
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError("normalization", f"must be one of {', '.join(NORMALIZATIONS)}, "
                                               f"got {self.normalization!r}")
        self.overlap = _as_float("overlap", self.overlap)
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError("overlap", f"must be in [0, 1), got {self.overlap}")
        if self.tta_axes is not None:
            if isinstance(self.tta_axes, (str, bytes)) or not isinstance(self.tta_axes, Sequence):
                raise ConfigError("tta_axes", f"must be a list of volume axes (0, 1, 2), got {self.tta_axes!r}")
            self.tta_axes = tuple(sorted({_as_int("tta_axes", a) for a in self.tta_axes}))
            if any(a not in (0, 1, 2) for a in self.tta_axes):
                raise ConfigError("tta_axes", f"volume axes must be 0, 1 or 2, got {list(self.tta_axes)}")
        if not isinstance(self.from_logits, bool):
            raise ConfigError("from_logits", f"must be true or false, got {self.from_logits!r}")
        if self.folds is not None:
            self.folds = _as_int("folds", self.folds)
            if self.folds < 2:
                raise ConfigError("folds", f"must be >= 2 or null (a single split by val_fraction), got {self.folds}")
        self.fold = _as_int("fold", self.fold)
        if not 0 <= self.fold < (self.folds or 1):
            raise ConfigError("fold", f"must be in 0..{(self.folds or 1) - 1}" +
                                      ("" if self.folds else " without folds") + f", got {self.fold}")
        if self.checkpoint not in CHECKPOINTS:
            raise ConfigError("checkpoint", f"must be one of {', '.join(CHECKPOINTS)}, got {self.checkpoint!r}")

    # ---------------------------------------------------------------- derived values (computed here only)

    @property
    def deep_supervision_weights(self) -> tuple[float, ...]:
        """Loss weight of each output, full resolution first: ``1, 1/2, 1/4, ...`` normalised to sum 1.

        With ``model["deep_supervision"]`` the U-Net has ``depth`` outputs (full resolution and the
        decoder levels 1 .. depth-1, each at half the previous resolution); nnU-Net's weights, except
        that the coarsest output keeps its weight (nnU-Net has more levels and zeroes its coarsest).
        Without deep supervision: ``(1.0,)``.

        >>> [round(w, 3) for w in RunSpec(dims=2, model={"depth": 3, "deep_supervision": True}).deep_supervision_weights]
        [0.571, 0.286, 0.143]
        """
        if not self.model.get("deep_supervision"):
            return (1.0,)
        raw = [0.5 ** level for level in range(self.depth)]
        return tuple(w / sum(raw) for w in raw)

    @property
    def effective_split_seed(self) -> int:
        """Seed of the training/validation split: ``split_seed``, or ``seed`` when it is None."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def depth(self) -> int:
        """Number of poolings of the U-Net (``model["depth"]``, default :data:`UNET_DEFAULT_DEPTH`)."""
        return int(self.model.get("depth", UNET_DEFAULT_DEPTH))

    @property
    def divisor(self) -> int:
        """Every spatial size the network sees must be a multiple of this (``2**depth``)."""
        return 2 ** self.depth

    @property
    def slices_per_sample(self) -> int:
        """Slices stacked as channels for one 2D sample (``2 * context_slices + 1``; 1 in 3D)."""
        return slices_per_sample(self.context_slices)

    @property
    def input_channels(self) -> int:
        """Channels of the network input (single-channel images: :attr:`slices_per_sample`)."""
        return self.slices_per_sample

    @property
    def train_mirror_axes(self) -> tuple[int, ...]:
        """Axes of the training patch (2 for 2D, 3 for 3D) that augmentation mirrors."""
        augment = self.augment
        flips = augment.get("flips", True) if isinstance(augment, Mapping) else bool(augment)
        return flip_axes(flips, self.dims)

    @property
    def in_plane_axes(self) -> tuple[int, ...]:
        """Volume axes of a 2D slice (all but :attr:`slice_axis`); all three in 3D."""
        return tuple(a for a in range(3) if self.dims == 3 or a != self.slice_axis)

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """Volume axes that test-time augmentation may mirror.

        :attr:`tta_axes` if given; otherwise the axes training mirrored: for 3D the patch axes are the
        volume axes, for 2D the slice's axes are the volume axes other than :attr:`slice_axis`, in order
        (mirroring the through-plane axis changes nothing for a 2D model). Empty when training did not
        mirror: then mirrored inputs are images the model never saw.
        """
        if self.tta_axes is not None:
            return self.tta_axes
        return tuple(sorted(self.in_plane_axes[a] for a in self.train_mirror_axes))

    # ---------------------------------------------------------------- a read-only mapping of config.json

    def __getitem__(self, key: str):
        if key not in self.field_names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.field_names())

    def __len__(self) -> int:
        return len(self.field_names())

    # ---------------------------------------------------------------- (de)serialisation

    @classmethod
    def field_names(cls) -> list[str]:
        """The valid keys of a spec, in order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping) -> RunSpec:
        """Build a spec from a mapping; unknown keys raise :class:`~medseg_tf.errors.ConfigError` naming them."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(None, f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                                    f"valid keys: {', '.join(cls.field_names())}")
        return cls(**dict(values))

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> RunSpec:
        """Read a spec written by :meth:`to_json` (or by hand).

        Raises
        ------
        DataError
            Missing file, invalid JSON, not an object, unknown keys or bad values
            (the message names the file and the problem).
        """
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(path, "config file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(path, f"cannot read config as JSON: {err}") from None
        if not isinstance(values, dict):
            raise DataError(path, "a config must be a JSON object {\"key\": value, ...}")
        try:
            return cls.from_dict(_upgrade(values))
        except (TypeError, ValueError) as err:
            raise DataError(path, str(err)) from None

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunSpec:
        """The spec of a run folder (its ``config.json``); folders written by older versions still load."""
        return cls.from_json(Path(run_dir) / "config.json")

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the spec as indented JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def replace(self, **changes) -> RunSpec:
        """A copy with some fields changed and validated (e.g. ``spec.replace(epochs=2)``)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ConfigError(None, f"unknown config key(s) {', '.join(map(repr, unknown))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, spec: RunSpec | Mapping | str | os.PathLike) -> RunSpec:
        """Accept a spec, a dict (older key names upgraded), or the path of a JSON file."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(_upgrade(spec))
        if isinstance(spec, (str, os.PathLike)):
            return cls.from_json(spec)
        raise TypeError(f"expected a RunSpec, dict or JSON path, got {type(spec).__name__}")


def _upgrade(values: Mapping) -> dict:
    """Older spellings of a run's settings in today's keys.

    Prediction once read ``depth`` and ``divisor`` at the top level of ``config.json``; they are the
    network's ``model["depth"]`` (``divisor = 2**depth``).
    """
    values = dict(values)
    depth = values.pop("depth", None)
    divisor = values.pop("divisor", None)
    if divisor is not None and depth is None:
        log2 = math.log2(float(divisor)) if float(divisor) > 0 else -1.0
        if not log2.is_integer() or log2 < 0:
            raise ConfigError("divisor", f"must be a power of 2 (2**depth), got {divisor!r}")
        depth = int(log2)
    if depth is not None:
        model = dict(values.get("model") or {})
        if model.get("depth", depth) != depth:
            raise ConfigError("depth", f"{depth} differs from model.depth {model['depth']}")
        model["depth"] = depth
        values["model"] = model
    return values
