"""Medical Segmentation Decathlon (MSD) folders: read, validate, write (no TensorFlow).

The MSD layout is the one on-disk format of the course::

    Task04_Hippocampus/
        dataset.json        # name, modality, labels, training list
        imagesTr/hippocampus_001.nii.gz
        labelsTr/hippocampus_001.nii.gz
        imagesTs/...        # optional, images without labels

:class:`MSDDataset` lists the cases from ``dataset.json`` and loads a volume
only when asked; every load is validated (shape, affine, finite intensities,
declared label values) and a problem raises :class:`~medseg_tf.errors.DataError`
naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_tf.errors import ConfigError, DataError, OverwriteError
from medseg_tf.io import Volume, case_id, load_nifti, nifti_files, reorient_to_ras, save_nifti

__all__ = ["Case", "MSDDataset", "write_msd_dataset", "check_dataset",
           "split_cases", "subsample_cases", "write_generated_dataset", "kfold_split"]

#: Maximum difference between image and label affines still counted as equal (mm).
AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Case:
    """One case of an MSD folder.

    Attributes
    ----------
    case_id : str
        File name without ``.nii.gz`` (e.g. ``"hippocampus_004"``).
    image_path : Path
    label_path : Path or None
        None for test images (``imagesTs``).
    """

    case_id: str
    image_path: Path
    label_path: Path | None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "dataset.json not found: an MSD folder needs dataset.json, "
                              "imagesTr/ and labelsTr/")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise DataError(path, "not a UTF-8 text file") from None
    if not isinstance(meta, dict):
        raise DataError(path, "expected a JSON object at the top level")
    return meta


class MSDDataset:
    """An MSD-layout folder, read lazily.

    Parameters
    ----------
    root : str or PathLike
        Folder holding ``dataset.json``.

    Attributes
    ----------
    root : Path
    name : str
    labels : dict[int, str]
        Label value -> name, from ``dataset.json`` (0 is background).
    modality : dict[int, str]
    cases : list[Case]
        Training cases (with labels), in ``dataset.json`` order.
    test_cases : list[Case]
        Entries of ``"test"`` (images only).

    Raises
    ------
    DataError
        If ``dataset.json`` is missing or malformed, declares no labels, or
        lists no training case.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(self.root, "is a file, not a data set folder" if self.root.exists()
                            else "data set folder not found")
        json_path = self.root / "dataset.json"
        meta = _read_json(json_path)
        self.meta = meta
        self.name = str(meta.get("name", self.root.name))
        try:
            self.labels = {int(k): str(v) for k, v in dict(meta["labels"]).items()}
            self.modality = {int(k): str(v) for k, v in dict(meta.get("modality", {"0": "unknown"})).items()}
        except KeyError:
            raise DataError(json_path, "no 'labels' entry (expected e.g. {\"0\": \"background\", ...})") from None
        except (TypeError, ValueError, AttributeError):
            raise DataError(json_path, "'labels' and 'modality' must map integer strings to names") from None
        if 0 not in self.labels:
            raise DataError(json_path, "'labels' must declare 0 (background)")
        if sorted(self.labels) != list(range(len(self.labels))):
            raise DataError(json_path, f"label values must be 0..K-1, got {sorted(self.labels)}")
        training = meta.get("training")
        if not isinstance(training, list):
            raise DataError(json_path, "'training' must be a list of {\"image\": ..., \"label\": ...}")
        self.cases = []
        for i, entry in enumerate(training):
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DataError(json_path, f"training entry {i} must have 'image' and 'label'")
            self.cases.append(Case(case_id(entry["image"]), self._resolve(entry["image"]),
                                   self._resolve(entry["label"])))
        if not self.cases:
            raise DataError(json_path, "the data set lists no training case")
        self.test_cases = [Case(case_id(p), self._resolve(p), None)
                           for p in meta.get("test", []) if isinstance(p, str)]

    def _resolve(self, rel: str) -> Path:
        return (self.root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)

    def __len__(self) -> int:
        return len(self.cases)

    def __repr__(self) -> str:
        return f"MSDDataset({str(self.root)!r}, name={self.name!r}, cases={len(self)}, labels={self.labels})"

    @property
    def case_ids(self) -> list[str]:
        """Case identifiers in order."""
        return [c.case_id for c in self.cases]

    @property
    def class_names(self) -> list[str]:
        """Names of labels ``0..K-1``."""
        return [self.labels[k] for k in sorted(self.labels)]

    @property
    def num_classes(self) -> int:
        """Number of label values, background included."""
        return len(self.labels)

    def case(self, key: int | str) -> Case:
        """The :class:`Case` at index ``key`` or with id ``key``."""
        if isinstance(key, (int, np.integer)):
            return self.cases[int(key)]
        for c in self.cases:
            if c.case_id == key:
                return c
        raise DataError(self.root / "dataset.json", f"lists no case {key!r}")

    def load_case(self, key: int | str, *, ras: bool = True) -> tuple[Volume, Volume]:
        """Load and validate one case.

        Parameters
        ----------
        key : int or str
            Index or case id.
        ras : bool
            Reorient both volumes to RAS (default True).

        Returns
        -------
        image : Volume
            float32 data, shape ``(X, Y, Z)`` (single-modality) or ``(X, Y, Z, M)``.
        label : Volume
            uint8 data, shape ``(X, Y, Z)``.

        Raises
        ------
        DataError
            Naming the file: missing, corrupt, not 3D, NaN/Inf intensities,
            image/label shape or affine mismatch, undeclared label values.
        """
        c = self.case(key)
        image = load_nifti(c.image_path)
        label = load_nifti(c.label_path)
        validate_pair(image, label, allowed_labels=set(self.labels))
        self._check_channels(image)
        image.data = image.data.astype(np.float32, copy=False)
        label.data = np.rint(label.data).astype(np.uint8)
        if ras:
            image, label = reorient_to_ras(image), reorient_to_ras(label)
        return image, label

    def load_arrays(self, key: int | str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """Image (float32, ``(X, Y, Z)``), label (uint8, same shape) in RAS and spacing (mm)."""
        image, label = self.load_case(key)
        data = image.data if image.data.ndim == 3 else image.data[..., 0]
        return data, label.data, image.spacing[:3]

    def _check_channels(self, image: Volume) -> None:
        """Raise :class:`DataError` unless a multi-modal image has one channel per declared modality."""
        n_mod = len(self.modality)
        n_ch = image.shape[3] if image.data.ndim == 4 else 1
        if n_mod > 1 and n_ch != n_mod:
            names = ", ".join(self.modality[k] for k in sorted(self.modality))
            raise DataError(image.path, f"has {n_ch} channel(s) (shape {image.shape}) but dataset.json declares "
                                        f"{n_mod} modalities ({names}); expected shape (X, Y, Z, {n_mod})")

    def load_channels(self, key: int | str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """Image with every channel (float32, ``(X, Y, Z, C)``, ``C = 1`` for a 3D image), label and spacing (mm), RAS.

        Unlike :meth:`load_arrays`, which keeps only the first channel, this keeps all
        modalities of a multi-modal task (e.g. MSD Task01: FLAIR, T1w, T1gd, T2w).
        """
        image, label = self.load_case(key)
        data = image.data if image.data.ndim == 4 else image.data[..., None]
        return data, label.data, image.spacing[:3]

    def load_image(self, case: Case, *, ras: bool = True) -> Volume:
        """Load and validate an image without label (e.g. from ``imagesTs``)."""
        image = load_nifti(case.image_path)
        validate_image(image)
        self._check_channels(image)
        image.data = image.data.astype(np.float32, copy=False)
        return reorient_to_ras(image) if ras else image


def validate_image(image: Volume) -> None:
    """Raise :class:`DataError` unless ``image`` is 3D (or 4D multi-modal) with finite values."""
    if image.data.ndim not in (3, 4):
        raise DataError(image.path, f"expected a 3D volume, got {image.data.ndim}D data of shape {image.shape}")
    if min(image.shape[:3]) < 2:
        raise DataError(image.path, f"expected a 3D volume, got shape {image.shape} (a 2D slice?)")
    data = np.asarray(image.data)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.isfinite(data).sum())
        raise DataError(image.path, f"{n_bad} NaN or Inf intensities")


def validate_pair(image: Volume, label: Volume, *, allowed_labels: set[int] | None = None) -> None:
    """Check an image and its label map belong together.

    Raises
    ------
    DataError
        Naming the file at fault: wrong dimensions, NaN/Inf, shape or affine
        mismatch (tolerance :data:`AFFINE_TOLERANCE` mm), non-integer or
        undeclared label values.
    """
    validate_image(image)
    if label.data.ndim != 3:
        raise DataError(label.path, f"a label map must be 3D, got shape {label.shape}")
    if tuple(image.shape[:3]) != tuple(label.shape):
        raise DataError(label.path, f"label shape {label.shape} does not match image shape "
                                    f"{image.shape[:3]} ({image.path.name if image.path else 'image'})")
    if not np.allclose(image.affine, label.affine, atol=AFFINE_TOLERANCE):
        raise DataError(label.path, "label affine differs from the image affine "
                                    f"({image.path.name if image.path else 'image'}): they are not on the same grid")
    data = np.asarray(label.data)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise DataError(label.path, "NaN or Inf in a label map")
        if not np.allclose(data, np.rint(data)):
            raise DataError(label.path, "label values must be integers")
    values = set(np.unique(data).astype(int).tolist())
    if allowed_labels is not None and not values <= allowed_labels:
        raise DataError(label.path, f"label values {sorted(values - allowed_labels)} are not declared "
                                    f"in dataset.json (declared: {sorted(allowed_labels)})")


def split_cases(case_ids: list[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split case ids (never slices) into training and validation lists, seeded.

    Parameters
    ----------
    case_ids : list of str
    val_fraction : float
        Share of the cases to validate on, ``0 <= val_fraction < 1``.
    seed : int
        Seed of the permutation that draws the validation cases.

    Returns
    -------
    train, val : list of str
        Both sorted in the original order; ``val`` has ``round(n * val_fraction)``
        cases (at least 1 when ``n >= 2``).
    """
    n = len(case_ids)
    if n == 0:
        raise ValueError("cannot split an empty list of cases")
    if not 0 <= val_fraction < 1:
        raise ConfigError("val_fraction", f"must be >= 0 and < 1, got {val_fraction}")
    n_val = max(1, int(round(n * val_fraction))) if n >= 2 and val_fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(case_ids) if i not in val_idx]
    val = [c for i, c in enumerate(case_ids) if i in val_idx]
    return train, val


def subsample_cases(case_ids: list[str], n: int | None, seed: int = 0) -> list[str]:
    """``n`` of ``case_ids`` drawn with ``seed``, in their original order (all of them if ``n`` is None).

    For one ``seed`` the subsets are nested: the first ``n`` of one seeded permutation.

    >>> ids = [f"c{i}" for i in range(6)]
    >>> small, large = subsample_cases(ids, 2, seed=1), subsample_cases(ids, 4, seed=1)
    >>> len(small), len(large), set(small) <= set(large), subsample_cases(ids, None) == ids
    (2, 4, True, True)
    """
    if n is None or n >= len(case_ids):
        return list(case_ids)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    keep = set(np.random.default_rng(seed).permutation(len(case_ids))[:n].tolist())
    return [c for i, c in enumerate(case_ids) if i in keep]


def kfold_split(case_ids: list[str], folds: int, fold: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Fold ``fold`` of a seeded ``folds``-fold split of case ids: (training cases, validation cases).

    The cases are shuffled once with ``seed``; fold ``k`` validates on every ``folds``-th case of that
    order starting at ``k``, so the folds' validation sets are disjoint and together hold every case
    exactly once (cross-validation: each case is predicted by the one model that never saw it).

    >>> train, val = kfold_split([f"c{i}" for i in range(5)], folds=5, fold=0)
    >>> len(train), len(val)
    (4, 1)

    Returns
    -------
    train, val : list of str
        Both in the original order.
    """
    n = len(case_ids)
    if not 2 <= folds <= n:
        raise ValueError(f"folds must be in 2..{n} (the number of cases), got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[fold::folds].tolist())
    return ([c for i, c in enumerate(case_ids) if i not in val_idx],
            [c for i, c in enumerate(case_ids) if i in val_idx])


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The NIfTI images of a folder (like MSD ``imagesTs/``), or of the ``imagesTr/`` of an MSD folder.

    Raises
    ------
    DataError
        When there are none.
    """
    folder = Path(folder)
    if (folder / "imagesTr").is_dir():
        folder = folder / "imagesTr"
    files = nifti_files(folder)
    if not files:
        raise DataError(folder, "holds no NIfTI images (.nii.gz or .nii)")
    return files


def prediction_plan(images_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                    overwrite: bool = False) -> list[tuple[Path, Path]]:
    """(image, output label map) pairs for predicting a folder; refused before anything is written.

    Every image of ``images_dir`` (:func:`image_files`) gets ``out_dir/<case>.nii.gz``.

    Raises
    ------
    DataError
        ``images_dir`` is missing or holds no images.
    OverwriteError
        An output exists and ``overwrite`` is False.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise DataError(images_dir, "is a file, not a folder" if images_dir.exists() else "folder not found")
    files = image_files(images_dir)
    outputs = [out_dir / f"{case_id(f)}.nii.gz" for f in files]
    existing = [p for p in outputs if p.exists()]
    if existing and not overwrite:
        raise OverwriteError(f"{existing[0]}: already exists ({len(existing)} of {len(outputs)} outputs do); "
                             "pass --overwrite (overwrite=True) to replace them")
    return list(zip(files, outputs))


#: What :func:`write_msd_dataset` writes into its folder (and so all that ``overwrite`` may replace).
MSD_OUTPUTS = ("dataset.json", "imagesTr", "labelsTr")


def write_msd_dataset(out_dir: str | os.PathLike, cases: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *,
                      name: str, labels: dict[int, str], modality: dict[int, str] | None = None,
                      description: str = "", licence: str = "", overwrite: bool = False,
                      extra: dict | None = None) -> Path:
    """Write cases in the MSD layout, atomically.

    Parameters
    ----------
    out_dir : str or PathLike
        Target folder. Written into a temporary sibling and renamed into place
        when complete, so a half-written data set never looks complete.
    cases : iterable of (case_id, image, label, affine)
        Read one case at a time (a generator keeps only one case in memory). image float32
        ``(X, Y, Z)`` or ``(X, Y, Z, C)`` (multi-modal, channels last as MSD Task01;
        ``tensorImageSize`` becomes ``"4D"``), label uint8 ``(X, Y, Z)``, affine 4x4 (mm).
    name, labels, modality, description, licence : dataset.json fields.
    overwrite : bool
        If False (default) and ``out_dir`` exists and is not empty, raise
        :class:`OverwriteError`; if True an existing folder is replaced only
        when it holds a ``dataset.json`` (an MSD folder), never another folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise OverwriteError(f"{out_dir}: folder exists and is not empty; pass --overwrite (overwrite=True) "
                                 "to replace it")
        if not (out_dir / "dataset.json").is_file():
            raise OverwriteError(f"{out_dir}: refusing to replace a folder that is not an MSD data set")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in MSD_OUTPUTS)
        if foreign:
            raise OverwriteError(f"{out_dir}: holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, "
                                 "which this command did not write; move it away or choose another folder "
                                 "(--overwrite replaces only dataset.json, imagesTr/ and labelsTr/)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        training = []
        four_d = False
        for name_of_case, image, label, affine in cases:
            four_d = four_d or np.ndim(image) == 4
            save_nifti(np.asarray(image, np.float32), tmp / "imagesTr" / f"{name_of_case}.nii.gz", affine=affine)
            save_nifti(np.asarray(label, np.uint8), tmp / "labelsTr" / f"{name_of_case}.nii.gz", affine=affine)
            training.append({"image": f"./imagesTr/{name_of_case}.nii.gz",
                             "label": f"./labelsTr/{name_of_case}.nii.gz"})
        meta = {
            "name": name, "description": description, "licence": licence,
            "tensorImageSize": "4D" if four_d else "3D",
            "modality": {str(k): v for k, v in (modality or {0: "MRI"}).items()},
            "labels": {str(k): v for k, v in sorted(labels.items())},
            "numTraining": len(training), "numTest": 0, "training": training, "test": [],
        }
        meta.update(extra or {})
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_generated_dataset(out_dir: str | os.PathLike, make_case, prefix: str, n_cases: int, seed: int, *,
                            name: str, labels: dict, modality: dict, description: str,
                            overwrite: bool = False) -> Path:
    """Generate ``n_cases`` cases with ``make_case(seed * 100_000 + i)`` and write them in MSD layout.

    The shared body of the phantom writers: case ``i`` is ``<prefix>_<i:03d>``, generated from its own
    seed (so one case does not depend on how many are written), written by :func:`write_msd_dataset`
    (atomically) with a CC0 licence and ``seed`` recorded in ``dataset.json``. ``make_case`` returns
    ``(image, label, affine)``.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    def cases():  # one case in memory at a time
        for i in range(n_cases):
            image, label, affine = make_case(seed * 100_000 + i)
            yield f"{prefix}_{i:03d}", image, label, affine

    return write_msd_dataset(out_dir, cases(), name=name, labels=labels, modality=modality,
                             description=description, licence="CC0 (generated)", overwrite=overwrite,
                             extra={"seed": seed})


def check_dataset(root: str | os.PathLike):
    """Validate every case of an MSD folder and tabulate it.

    Returns
    -------
    table : pandas.DataFrame
        One row per case: ``case``, ``shape``, ``spacing_mm``, ``orientation``,
        ``min``, ``max``, ``labels`` (values present), ``foreground_pct``,
        ``error`` (empty when the case is fine).

    Raises
    ------
    DataError
        If the folder itself is unusable (no or malformed ``dataset.json``, no cases).
    """
    import pandas as pd

    ds = MSDDataset(root)
    rows = []
    for case in ds.cases:
        row = {"case": case.case_id, "shape": "", "spacing_mm": "", "orientation": "", "min": np.nan,
               "max": np.nan, "labels": "", "foreground_pct": np.nan, "error": ""}
        try:
            image, label = ds.load_case(case.case_id, ras=False)
            row.update(shape="x".join(map(str, image.shape)),
                       spacing_mm="x".join(f"{s:.3g}" for s in image.spacing),
                       orientation="".join(image.orientation),
                       min=float(np.min(image.data)), max=float(np.max(image.data)),
                       labels=",".join(map(str, np.unique(label.data).tolist())),
                       foreground_pct=100.0 * float(np.mean(label.data > 0)))
        except DataError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return pd.DataFrame(rows)
