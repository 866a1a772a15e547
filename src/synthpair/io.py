"""Safe file output: nothing half-written is ever left behind.

Files are written to a temporary name in the same directory and renamed into place (atomic on POSIX);
whole output folders are built in a sibling temporary folder and renamed at the end
(:func:`atomic_output_dir`). OS errors on the output path (disk full, permission denied) become
:class:`~synthpair.errors.SynthpairError` lines that name the path.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import SynthpairError, fail


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _os_error(path: Path | str, err: OSError) -> SynthpairError:
    if err.errno == errno.ENOSPC:
        return fail(f"{path}: disk full while writing; free space or choose another --out")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return fail(f"{path}: permission denied; choose a writable --out folder")
    return fail(f"{path}: cannot write ({err.strerror}); check the path and choose another --out")


@contextlib.contextmanager
def translate_os_errors(path: Path | str, *, name_given_path: bool = False) -> Iterator[None]:
    """Turn OSErrors raised inside the block into one-line SynthpairErrors.

    The message names the file the OS complained about, or ``path`` when ``name_given_path`` (used where
    the OS would name an internal temporary file the user never asked for).
    """
    try:
        yield
    except SynthpairError:
        raise
    except OSError as err:
        named = path if name_given_path else (getattr(err, "filename", None) or path)
        raise _os_error(named, err) from None


def ensure_dir(path: Path | str) -> Path:
    path = Path(path)
    with translate_os_errors(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename (never a partial file at ``path``)."""
    path = Path(path)
    with translate_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def write_text_atomic(path: Path | str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=True) + "\n"


def write_json_atomic(path: Path | str, obj: Any) -> None:
    write_text_atomic(path, dumps_json(obj))


def read_json(path: Path | str, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise fail(f"{path}: {what} not found; check the folder was produced by synthpair")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise fail(f"{path}: not valid JSON ({err}); delete it and rerun the stage that writes it") from None


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] → uint8 in [0, 255] (round half to even, clipped): the PNG encoding of every image
    synthpair writes (value ``v`` stands for ``v / 127.5 - 1``)."""
    return np.clip(np.rint((np.asarray(images, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float32 [-1, 1] (exact inverse of :func:`to_uint8` on the uint8 grid)."""
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def save_png_atomic(path: Path | str, array: np.ndarray) -> None:
    """Save a uint8 array (H, W) or (H, W, 3) as PNG atomically."""
    import io as _io

    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"save_png_atomic expects uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


@contextlib.contextmanager
def atomic_output_dir(out: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder in a temporary sibling, then rename it to ``out`` on success.

    On any exception the temporary folder is removed, so ``out`` either does not exist or is complete.
    ``overwrite=True`` replaces an existing complete ``out``; otherwise an existing non-empty ``out`` is
    an error.
    """
    out = Path(out)
    exists_non_empty = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if exists_non_empty and not overwrite:
        raise fail(f"{out}: output folder already exists and is not empty; choose a new --out or pass --overwrite")
    with translate_os_errors(out, name_given_path=True):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        with translate_os_errors(out, name_given_path=True):
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable_dir(out: Path | str) -> Path:
    """Create ``out`` (and parents) and check a file can be written there; one-line error otherwise."""
    out = Path(out)
    with translate_os_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".synthpair-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    return out
