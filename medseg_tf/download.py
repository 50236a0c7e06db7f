"""Download and unpack the Medical Segmentation Decathlon (MSD) tasks.

The ten MSD tasks are fetched from the public mirror that MONAI's
``DecathlonDataset`` uses (the ``msd-for-monai`` bucket on AWS open data) and
checked against the MD5 checksums published in MONAI
(``monai/apps/datasets.py``, ``DecathlonDataset.md5``). The original source is
http://medicaldecathlon.com/ (Google Drive).

Guarantees, so that a student never ends up with half a data set that looks
whole:

* A download is written to ``<archive>.part`` and renamed to its final name
  only after its size and checksum have been verified. A ``.part`` file left by
  an interrupted download is resumed with an HTTP ``Range`` request; a server
  that ignores ``Range`` makes the download restart cleanly from byte 0.
* An archive is extracted into a hidden temporary folder next to the target
  and renamed into place only when extraction is complete.
* Archive members that would land outside the target folder (absolute paths,
  ``..``, symbolic or hard links pointing outside, device files) are refused
  with a :class:`~medseg_tf.errors.DownloadError` naming the member, before
  anything is written.
* An existing, non-empty task folder is never touched, and a file that the user
  put in place is never deleted.

Standard library and tqdm only: no TensorFlow, no ``requests``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from medseg_tf import __version__
from medseg_tf.errors import ConfigError, DownloadError, OverwriteError

#: Base URL of the mirror used by MONAI's ``DecathlonDataset``.
MSD_MIRROR = "https://msd-for-monai.s3-us-west-2.amazonaws.com"

# MD5 checksums as published in MONAI's monai/apps/datasets.py (DecathlonDataset.md5).
_MSD_MD5 = {
    "Task01_BrainTumour": "240a19d752f0d9e9101544901065d872",
    "Task02_Heart": "06ee59366e1e5124267b774dbd654057",
    "Task03_Liver": "a90ec6c4aa7f6a3d087205e23d4e6397",
    "Task04_Hippocampus": "9d24dba78a72977dbd1d2e110310f31b",
    "Task05_Prostate": "35138f08b1efaef89d7424d2bcc928db",
    "Task06_Lung": "8afd997733c7fc0432f71255ba4e52dc",
    "Task07_Pancreas": "4f7080cfca169fa8066d17ce6eb061e4",
    "Task08_HepaticVessel": "641d79e80ec66453921d997fbf12a29c",
    "Task09_Spleen": "410d4a301da4e5b2f6f86ec3ddba524e",
    "Task10_Colon": "bad7a188931dc2f6acf72b08eb6202d0",
}

#: The ten MSD tasks: name -> ``{"url": ..., "md5": ...}`` (the archive is ``<name>.tar``).
MSD_TASKS: dict[str, dict] = {
    name: {"url": f"{MSD_MIRROR}/{name}.tar", "md5": md5} for name, md5 in _MSD_MD5.items()
}

_CHUNK = 1 << 20  # bytes read per network / disk call
_PART_SUFFIX = ".part"
# Alternative archive names a user may have put next to the target (first found wins).
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


# --------------------------------------------------------------------------- names


def resolve_task(task: str) -> str:
    """Return the canonical MSD task name for a user spelling.

    Parameters
    ----------
    task : str
        ``"Task04_Hippocampus"``, ``"Task04"``, ``"task4"``, ``"04"``, ``"4"`` or
        ``"hippocampus"`` (case-insensitive; ``_``, ``-`` and spaces ignored in
        the name part, so ``"hepatic_vessel"`` works).

    Returns
    -------
    str
        A key of :data:`MSD_TASKS`, e.g. ``"Task04_Hippocampus"``.

    Raises
    ------
    ValueError
        If the spelling matches no task.
    """
    if not isinstance(task, str) or not task.strip():
        raise ValueError(f"task must be a non-empty string, got {task!r}")
    key = re.sub(r"[\s_\-]", "", task.strip().lower())
    for name in MSD_TASKS:
        number, label = name[4:6], name[7:].lower()  # "04", "hippocampus"
        spellings = {
            re.sub(r"_", "", name.lower()),  # task04hippocampus
            f"task{number}",
            f"task{int(number)}",
            number,
            str(int(number)),
            label,
        }
        if key in spellings:
            return name
    raise ConfigError("task", f"{task!r} is not an MSD task; expected one of {', '.join(MSD_TASKS)}")


# --------------------------------------------------------------------------- checksums


def md5sum(path: str | os.PathLike, *, chunk_size: int = _CHUNK) -> str:
    """MD5 of a file's bytes, as 32 lowercase hex digits.

    Parameters
    ----------
    path : str or os.PathLike
        The file to hash (read in ``chunk_size`` byte blocks, so any size works).
    chunk_size : int
        Bytes read at a time.

    Returns
    -------
    str
        The hex digest.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _check_md5_format(md5: str | None) -> str | None:
    if md5 is None:
        return None
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ConfigError("md5", f"must be 32 hex digits, got {md5!r}")
    return md5.lower()


# --------------------------------------------------------------------------- fetch


class _RestartFromZero(Exception):
    """Internal: the ``.part`` file cannot be resumed; start again from byte 0."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + _PART_SUFFIX)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-999/1000"`` -> ``(100, 1000)``; ``"bytes */1000"`` -> ``(None, 1000)``."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _connection_error(url: str, err: BaseException) -> DownloadError:
    reason = getattr(err, "reason", None) or err
    return DownloadError(f"could not download {url}: {type(reason).__name__}: {reason}")


def _download_to_part(url: str, part: Path, offset: int, progress: bool, timeout: float) -> int | None:
    """Stream ``url`` into ``part`` starting at byte ``offset``.

    Returns the total size announced by the server (None if unknown). Raises
    :class:`_RestartFromZero` when the ``.part`` file cannot be resumed.
    """
    headers = {"User-Agent": f"medseg-tf/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # Range not satisfiable: .part is as long as the file, or longer
            _, total = _parse_content_range(err.headers.get("Content-Range"))
            err.close()
            if total is not None and total == offset:
                return total  # already complete (e.g. interrupted before the rename)
            raise _RestartFromZero from None
        raise DownloadError(f"could not download {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _connection_error(url, err) from err

    with response:
        status = getattr(response, "status", None)
        if status is None and url.lower().startswith("file:"):
            status = 200  # urllib's file:// responses carry no status and ignore Range: a full read
        if offset and status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _RestartFromZero
            mode = "ab"
        elif status == 200:  # a fresh download, or a server that ignored Range: restart cleanly
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadError(f"could not download {url}: unexpected HTTP status {status}")

        written = offset
        with open(part, mode) as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[: -len(_PART_SUFFIX)], disable=not progress, leave=True,
        ) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    f.flush()
                    raise DownloadError(
                        f"download of {url} interrupted after {written} bytes "
                        f"({type(err).__name__}: {err}); the partial data is kept in {part}: "
                        "run again to resume"
                    ) from err
                if not chunk:
                    break
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))

    if total is not None and written < total:
        raise DownloadError(
            f"download of {url} interrupted after {written} of {total} bytes; "
            f"the partial data is kept in {part}: run again to resume"
        )
    if total is not None and written > total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} sent {written} bytes but announced {total}; deleted {part}")
    return total


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 10.0,
) -> Path:
    """Download ``url`` to ``dest``: resumable, verified, atomic.

    Bytes go to ``<dest>.part``; an existing ``.part`` is resumed with an HTTP
    ``Range`` request (a server that ignores it makes the download restart from
    byte 0). Only when the size matches the server's ``Content-Length`` and the
    MD5 matches ``md5`` (when given) is the file renamed to ``dest``. Without
    ``md5`` the size check is the only verification (none if the server sends no
    length).

    Parameters
    ----------
    url : str
        ``http://``, ``https://`` or ``file://`` URL (a ``file://`` source is always read whole).
    dest : str or os.PathLike
        Final path of the file; its folder is created if needed.
    md5 : str, optional
        Expected MD5 (32 hex digits).
    progress : bool
        Show a tqdm progress bar (bytes) on stderr.
    timeout : float
        Seconds to wait for the connection and for each read; keep it short so
        that an offline machine fails fast.

    Returns
    -------
    Path
        ``dest``. If ``dest`` already exists it is only verified (when ``md5`` is
        given) and returned, never re-downloaded or deleted.

    Raises
    ------
    DownloadError
        Connection failure (refused, DNS, timeout), HTTP error, interrupted
        transfer (the ``.part`` is kept for resuming) or checksum mismatch (the
        ``.part`` is deleted, nothing is renamed).
    ValueError
        Malformed ``md5`` or non-positive ``timeout``.
    """
    md5 = _check_md5_format(md5)
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not str(url).lower().startswith(("http://", "https://", "file://")):
        raise ConfigError("url", f"must start with http://, https:// or file://, got {url!r}")
    dest = Path(dest)
    if dest.exists():
        if md5 is not None and (actual := md5sum(dest)) != md5:
            raise DownloadError(
                f"{dest} already exists but its MD5 is {actual}, expected {md5}: it is incomplete "
                "or a different file; delete it to download again"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)

    for attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        try:
            total = _download_to_part(url, part, offset, progress, timeout)
            break
        except _RestartFromZero:
            part.unlink(missing_ok=True)
            if attempt:
                raise DownloadError(f"could not download {url}: the server refused to restart") from None

    if not part.exists():  # a 0-byte body on a fresh download still creates the file, so this is odd
        raise DownloadError(f"could not download {url}: nothing was received")
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink()
        raise DownloadError(f"download of {url} has {size} bytes, expected {total}; deleted {part}")
    if md5 is not None and (actual := md5sum(part)) != md5:
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: MD5 {actual}, expected {md5}; the corrupt download was "
            "deleted, run again to download afresh"
        )
    os.replace(part, dest)  # atomic: dest appears only complete and verified
    return dest


# --------------------------------------------------------------------------- extraction


def _is_junk(name: str) -> bool:
    """macOS metadata (``._*`` AppleDouble files, ``__MACOSX/``), skipped on extraction."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(p == "__MACOSX" or p.startswith("._") for p in parts)


def _within(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _unsafe_path_reason(name: str) -> str | None:
    """Why a member name is unsafe to extract (None if it is safe)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "path contains '..'"
    return None


def _refuse(archive: Path, member: str, why: str) -> DownloadError:
    return DownloadError(f"{archive}: refusing archive member {member!r} ({why}); nothing was extracted")


def _check_tar_members(archive: Path, tf: tarfile.TarFile, root: str) -> list[tarfile.TarInfo]:
    """Validate every member before anything is written; return those to extract."""
    keep = []
    for m in tf.getmembers():
        if _is_junk(m.name):
            continue
        if reason := _unsafe_path_reason(m.name):
            raise _refuse(archive, m.name, reason)
        dest = os.path.normpath(os.path.join(root, m.name))
        if not _within(root, dest):
            raise _refuse(archive, m.name, "path outside the target folder")
        if m.issym():
            if os.path.isabs(m.linkname) or m.linkname.startswith(("/", "\\")):
                raise _refuse(archive, m.name, f"symbolic link to absolute path {m.linkname!r}")
            target = os.path.normpath(os.path.join(os.path.dirname(dest), m.linkname))
            if not _within(root, target):
                raise _refuse(archive, m.name, f"symbolic link to {m.linkname!r} outside the target folder")
        elif m.islnk():
            if _unsafe_path_reason(m.linkname):
                raise _refuse(archive, m.name, f"hard link to {m.linkname!r} outside the target folder")
            target = os.path.normpath(os.path.join(root, m.linkname))
            if not _within(root, target):
                raise _refuse(archive, m.name, f"hard link to {m.linkname!r} outside the target folder")
        elif not (m.isfile() or m.isdir()):
            raise _refuse(archive, m.name, "device, FIFO or other special file")
        keep.append(m)
    return keep


def _extract_tar(archive: Path, tmp: Path) -> None:
    root = os.path.realpath(tmp)
    with tarfile.open(archive, "r:*") as tf:
        members = _check_tar_members(archive, tf, root)
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        for m in members:
            # Links extracted earlier may redirect a later member: check the real location too.
            parent = os.path.realpath(os.path.dirname(os.path.join(root, m.name)))
            if not _within(root, parent):
                raise _refuse(archive, m.name, "path leads outside the target folder through a link")
            try:
                tf.extract(m, root, **extra)
            except tarfile.TarError as err:  # FilterError from the 'data' filter, ReadError, ...
                raise _refuse(archive, m.name, f"{type(err).__name__}: {err}") from err
            if m.issym() and not _within(root, os.path.realpath(os.path.join(root, m.name))):
                raise _refuse(archive, m.name, "symbolic link resolves outside the target folder")
    # Final sweep: links resolved individually may combine to point outside.
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = os.path.join(dirpath, entry)
            if os.path.islink(path) and not _within(root, os.path.realpath(path)):
                raise _refuse(archive, os.path.relpath(path, root), "symbolic link resolves outside the target folder")


def _extract_zip(archive: Path, tmp: Path) -> None:
    root = os.path.realpath(tmp)
    with zipfile.ZipFile(archive) as zf:
        infos = []
        for info in zf.infolist():
            if _is_junk(info.filename):
                continue
            if reason := _unsafe_path_reason(info.filename):
                raise _refuse(archive, info.filename, reason)
            if not _within(root, os.path.normpath(os.path.join(root, info.filename))):
                raise _refuse(archive, info.filename, "path outside the target folder")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _refuse(archive, info.filename, "symbolic links in zip archives are not supported")
            infos.append(info)
        for info in infos:
            zf.extract(info, root)


def _remove_stale_extractions(parent: Path, prefix: str) -> None:
    """Delete hidden extraction folders left by a process that was killed while extracting.

    Each is named ``.<prefix>.extracting-<pid>-<random>``; one whose process no longer runs is litter.
    """
    for path in parent.glob(f".{prefix}.extracting-*"):
        pid_text = path.name[len(f".{prefix}.extracting-"):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # a live process of another user
            continue


def _extract_to_temp(archive: Path, parent: Path, prefix: str) -> Path:
    """Extract ``archive`` into a new hidden folder in ``parent``; remove it on any failure."""
    archive = Path(archive)
    if not archive.is_file():
        raise DownloadError(f"{archive}: archive not found")
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_extractions(parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}.extracting-{os.getpid()}-", dir=parent))
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        else:
            raise DownloadError(f"{archive}: not a tar, tar.gz or zip archive")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError)) and not isinstance(
            err, DownloadError
        ):
            raise DownloadError(f"{archive}: could not extract ({type(err).__name__}: {err})") from err
        raise
    return tmp


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _move_into_place(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest``; ``dest`` may only be absent or an empty folder."""
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        dest.rmdir()
    if dest.exists() or dest.is_symlink():
        raise OverwriteError(f"{dest} already exists; not overwriting it")
    os.replace(src, dest)


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _is_junk(p.name))


def extract_archive(archive: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Safely extract a tar, tar.gz (tgz, tar.bz2, tar.xz) or zip archive into ``out_dir``.

    The archive is unpacked into a hidden temporary folder inside ``out_dir``;
    its top-level entries are renamed into ``out_dir`` only after the whole
    archive was extracted. Members that would escape the folder (absolute paths,
    ``..``, links pointing outside, device files) are refused before anything is
    written. macOS metadata members (``._*``, ``__MACOSX/``) are skipped.

    Parameters
    ----------
    archive : str or os.PathLike
        The archive file (format detected from its content, not its name).
    out_dir : str or os.PathLike
        Folder to extract into (created if needed).

    Returns
    -------
    Path
        ``out_dir / <top>`` when the archive holds a single top-level folder (as
        the MSD tarballs do), otherwise ``out_dir``.

    Raises
    ------
    DownloadError
        Unsafe member (the message names it), unreadable or unknown archive.
    OverwriteError
        A top-level entry already exists in ``out_dir`` (nothing is moved then).
    """
    archive, out_dir = Path(archive), Path(out_dir)
    tmp = _extract_to_temp(archive, out_dir, prefix=archive.name)
    try:
        entries = _visible_entries(tmp)
        for entry in entries:  # check all before moving any
            dest = out_dir / entry.name
            if dest.exists() and not (dest.is_dir() and not _is_nonempty_dir(dest)):
                raise OverwriteError(f"{dest} already exists; not overwriting it with the content of {archive}")
        for entry in entries:
            _move_into_place(entry, out_dir / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(entries) == 1 and (out_dir / entries[0].name).is_dir():
        return out_dir / entries[0].name
    return out_dir


# --------------------------------------------------------------------------- MSD tasks


def _find_dataset_root(folder: Path) -> Path | None:
    """The folder holding ``dataset.json``: ``folder`` itself or its single subfolder."""
    if (folder / "dataset.json").is_file():
        return folder
    entries = _visible_entries(folder)
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "dataset.json").is_file():
        return entries[0]
    return None


def _manual_hint(name: str, archive: Path, target: Path, url: str) -> str:
    return (
        f"To install {name} by hand, download {url} (e.g. on another machine) and put the archive at "
        f"{archive}, or put an already-extracted folder (holding dataset.json, imagesTr/, labelsTr/) at "
        f"{target}; then run this again."
    )


def download_task(
    task: str,
    out_dir: str | os.PathLike,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 10.0,
) -> Path:
    """Download, verify and extract one MSD task; return its folder.

    Steps, each skipped when its result is already there:

    1. ``out_dir/<Task>`` exists and is non-empty: return it untouched (no
       network, no check).
    2. ``out_dir/<Task>.tar`` (or ``.tar.gz``, ``.tgz``, ``.zip``) exists, e.g.
       put there by the user: verify it, no download. Otherwise :func:`fetch` it
       to ``out_dir/<Task>.tar`` (resumable, verified before the final rename).
    3. Extract into a hidden temporary folder in ``out_dir``, check that it
       holds ``dataset.json``, and rename it to ``out_dir/<Task>``.

    The archive is kept after extraction (delete it to save space).

    Parameters
    ----------
    task : str
        Task name: ``"Task04_Hippocampus"``, ``"Task04"`` or ``"hippocampus"``
        (case-insensitive; see :func:`resolve_task`).
    out_dir : str or os.PathLike
        Folder that receives the archive and the task folder.
    url : str, optional
        Download from here instead of the mirror in :data:`MSD_TASKS`.
    md5 : str, optional
        Expected MD5 of the archive. Default: the published checksum of the
        task, used for the ``.tar`` archive (also when ``url`` is a mirror of
        it); a user-provided ``.tar.gz``/``.tgz``/``.zip`` is then only checked
        for ``dataset.json``.
    progress : bool
        Show a progress bar while downloading.
    timeout : float
        Connection/read timeout in seconds; offline, the call fails after at
        most about this long.

    Returns
    -------
    Path
        ``out_dir / <Task>`` (e.g. ``data/Task04_Hippocampus``).

    Raises
    ------
    DownloadError
        No connection, interrupted download, checksum mismatch, unsafe archive
        or an archive without ``dataset.json``. The message says where to put
        an archive or an extracted folder obtained by other means.
    ValueError
        Unknown task or malformed ``md5``.
    """
    name = resolve_task(task)
    md5 = _check_md5_format(md5)
    out_dir = Path(out_dir)
    target = out_dir / name
    if _is_nonempty_dir(target):
        return target
    if target.exists() and not target.is_dir():
        raise DownloadError(f"{target} exists and is not a folder; move it away to download {name}")
    url = url or MSD_TASKS[name]["url"]
    tar_path = out_dir / f"{name}.tar"
    hint = _manual_hint(name, tar_path, target, url)

    archive = next((p for s in _ARCHIVE_SUFFIXES if (p := out_dir / f"{name}{s}").is_file()), None)
    expected = md5 if md5 is not None else (MSD_TASKS[name]["md5"] if archive in (None, tar_path) else None)
    if archive is None:
        try:
            archive = fetch(url, tar_path, md5=expected, progress=progress, timeout=timeout)
        except DownloadError as err:
            raise DownloadError(f"{err}\n{hint}") from err
    elif expected is not None and (actual := md5sum(archive)) != expected:
        raise DownloadError(
            f"{archive}: MD5 is {actual}, expected {expected}: the archive is incomplete or a different "
            f"file. It was left in place; delete it to download again, or extract it yourself to {target}."
        )

    tmp = _extract_to_temp(archive, out_dir, prefix=name)
    try:
        root = _find_dataset_root(tmp)
        if root is None:
            raise DownloadError(
                f"{archive}: does not contain an MSD task (no dataset.json at its top level or in its single "
                "top-level folder); nothing was extracted"
            )
        _move_into_place(root, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
