"""The run folder a training run writes, and the lock that keeps a second writer out.

A run folder holds ``config.json`` (the :class:`~medseg_tf.runspec.RunSpec`), ``split.json``,
``model.keras``, ``history.csv``, ``summary.json`` (written last: its presence marks the run complete),
``logs/`` and, while running, ``backup/``. Only these (:data:`RUN_FILES`, :data:`RUN_DIRS`) are ever
deleted by ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from medseg_tf import settings
from medseg_tf.errors import DataError, OverwriteError, RunLockedError
from medseg_tf.runspec import RunSpec
from medseg_tf.runtime import Runtime, _task

__all__ = ["RUN_FILES", "RUN_DIRS", "LOCK_FILE", "resolve_run_dir", "read_history", "lock_run_dir"]

#: Files and folders a run writes (the only things ``overwrite=True`` deletes).
RUN_FILES = ("config.json", "split.json", "model.keras", "history.csv", "summary.json")
RUN_DIRS = ("logs", "backup")
#: The lock file a training run holds (see :func:`lock_run_dir`); not part of a run's results.
LOCK_FILE = ".lock"


def resolve_run_dir(config: RunSpec) -> Path:
    """The run folder of ``config`` (see :attr:`RunSpec.out_dir`)."""
    if config.out_dir is None:
        data = config.data if config.data in settings.DATASETS else Path(config.data).name
        return settings.runs_dir() / f"{data}_{config.dims}d"
    path = Path(config.out_dir).expanduser()
    return path if path.is_absolute() else settings.runs_dir() / path


def _clean_run_dir(run_dir: Path) -> None:
    """Delete what a run writes (and nothing else)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _backup_dir(run_dir: Path, runtime: Runtime) -> Path:
    if runtime.strategy_name != "multi_worker":
        return run_dir / "backup"
    task_type, task_id = _task()
    return run_dir / "backup" / f"{task_type}_{task_id}"


def _restored_epoch(backup_dir: Path) -> int:
    """Epoch BackupAndRestore will resume from (0 if there is no usable backup)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        path = backup_dir / name
        if path.is_file() and (backup_dir / "latest.weights.h5").is_file():
            try:
                return int(json.loads(path.read_text())["epoch"])
            except (ValueError, KeyError, TypeError):
                continue
    return 0


def _prepare_run_dir(run_dir: Path, config: RunSpec, *, overwrite: bool, resume: bool,
                     runtime: Runtime) -> int:
    """Check/clean the run folder; return the epoch training starts from."""
    backup = _backup_dir(run_dir, runtime)
    if not runtime.is_chief:  # the chief owns the folder; workers only read their backup
        return _restored_epoch(backup) if resume else 0
    if not run_dir.exists() or not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return 0
    if (run_dir / "summary.json").is_file():
        if not overwrite:
            raise OverwriteError(f"{run_dir}: holds a complete training run; pass --overwrite (overwrite=True) "
                                 "(or choose another --out) to replace it")
        _clean_run_dir(run_dir)
        return 0
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        if not overwrite:
            raise OverwriteError(f"{run_dir}: folder is not empty and holds no run (no config.json); "
                                 "choose another --out or pass --overwrite (overwrite=True)")
        _clean_run_dir(run_dir)
        return 0
    try:
        same = RunSpec.from_json(saved_path).to_dict() == config.to_dict()
    except DataError:
        same = False
    if resume and same:
        epoch = _restored_epoch(backup)
        if epoch == 0:
            _clean_run_dir(run_dir)
        return epoch
    if not overwrite:
        why = "with a different config" if not same else "and resume=False (--no-resume)"
        raise OverwriteError(f"{run_dir}: holds an interrupted run {why}; pass --overwrite (overwrite=True) to "
                             "start over" + (" or resume it (resume=True, no --no-resume)" if same else ""))
    _clean_run_dir(run_dir)
    return 0


def read_history(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``history.csv`` (Keras' ``CSVLogger``) as dicts of floats, ``epoch`` as int; [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    if "epoch" in table:
        table["epoch"] = table["epoch"].astype(int)
    return table.to_dict("records")


def _truncate_history(path: Path, epochs_done: int) -> list[dict]:
    """Keep the rows of epochs ``< epochs_done`` (rows written after the last backup go)."""
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    table[table["epoch"] < epochs_done].to_csv(path, index=False)
    return read_history(path)


@contextlib.contextmanager
def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on ``run_dir/.lock`` while training writes the folder.

    A second writer gets :class:`RunLockedError` at once. The lock is the operating system's
    (``fcntl.flock``), so a killed run releases it; the empty ``.lock`` file stays and is ignored.
    When training fails before writing anything (a refused folder, for instance), the ``.lock``
    file and the folder this call created are removed again, so a refusal leaves no trace.
    """
    import fcntl

    created_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_FILE
    created_lock = not lock_path.exists()
    handle = open(lock_path, "a")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            created_lock = False  # another writer's lock file
            raise RunLockedError(f"{run_dir}: another training run is writing to this folder; wait for it "
                                 "to finish or choose another out_dir (--out)") from None
        yield
    except BaseException as exc:
        refused = isinstance(exc, OverwriteError)  # raised before anything was written
        if created_lock and (refused or not any(p.name != LOCK_FILE for p in run_dir.iterdir())):
            lock_path.unlink(missing_ok=True)  # still held: no other writer can have it
            if created_dir and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise
    finally:
        handle.close()


def _write_summary(run_dir: Path, runtime: Runtime, seconds: float, *, resumed_from: int,
                   checkpoint: str = "best") -> None:
    rows = read_history(run_dir / "history.csv")
    scored = [r for r in rows if isinstance(r.get("val_dice_mean"), float)]
    best = max(scored, key=lambda r: r["val_dice_mean"]) if scored else {}
    summary = {
        "epochs": len(rows),
        "best_epoch": int(best.get("epoch", -1)) + 1,
        "best_val_dice_mean": best.get("val_dice_mean", float("nan")),
        "best_val_dice": {k[len("val_dice_"):]: v for k, v in best.items()
                          if k.startswith("val_dice_") and k != "val_dice_mean"},
        "final_val_dice_mean": scored[-1]["val_dice_mean"] if scored else float("nan"),
        "checkpoint": checkpoint,
        "kept_epoch": (int(best.get("epoch", -1)) + 1) if checkpoint == "best" else len(rows),
        "seconds_this_session": round(seconds, 1),
        "resumed_from_epoch": resumed_from,
        "runtime": runtime.describe(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
