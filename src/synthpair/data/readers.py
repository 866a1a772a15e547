"""Readers for the three source kinds that ``prepare`` accepts.

* ``folder``: ``images/`` + ``masks/`` with matching stems (extensions may differ, e.g. ``.jpg`` image and
  ``.png`` mask), read with PIL. RGB images whose three channels are identical (for JPEG: within ±3)
  become grayscale.
  Masks: binary ``{0, 255}`` (→ ``{0, 1}``) or small integer labels ``0..MAX_LABEL``; masks stored as JPEG
  are thresholded at 128 (JPEG noise), masks stored losslessly with other values are an error.
* ``nnunet``: nnU-Net raw — ``dataset.json`` (``labels``, ``channel_names``, ``file_ending``),
  ``imagesTr/<case>_<XXXX><ending>`` (channel suffixes) and ``labelsTr/<case><ending>``; 2-D
  (``.png``…) or volumes (``.nii.gz``, sliced like the ``nifti`` kind). Several channels (``_0000``,
  ``_0001``, …: MR contrasts such as T1/FLAIR/T1c, BraTS' four, MSD prostate's T2/ADC) are read as NAMED
  channels (``Source.channel_names``, up to 4), not as RGB — unless ``channel_names`` is R, G, B. A
  ``metadata.csv`` beside ``dataset.json`` with the nnU-Net case id (``case``/``case_id``/``identifier``
  column) and a ``patient``/``patient_id``/``subject``/``subject_id`` column groups cases by patient.
* ``nifti``: ``images/*.nii(.gz)`` + ``labels/`` or ``masks/`` volumes with the same names, sliced to 2-D
  along ``axis`` in the voxel-array order (no reorientation), keeping case id, slice index and the
  in-plane spacing from the header zooms. A DICOM series may stand in for an image volume:
  ``images/<case>/*.dcm`` (one slice per file, pydicom, sorted along the slice normal) gives an array
  (rows, cols, slices) with rescale slope/intercept applied; its label volume ``labels/<case>.nii.gz``
  must have that same array shape and order.

Single 2-D DICOM files (``images/*.dcm``) are read in the ``folder`` kind with their ``PixelSpacing``.

Readers yield :class:`SourceGroup` objects — one 2-D image, or the chosen slices of one volume — whose
items carry raw intensities (float32) and integer label maps. Every problem with the input is a one-line
:class:`~synthpair.errors.SynthpairError` naming the file and the fix.
"""
from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import SynthpairError, fail

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
VOLUME_EXTS = (".nii.gz", ".nii")
JPEG_EXTS = (".jpg", ".jpeg")
MAX_LABEL = 31  # masks with integer values 0..MAX_LABEL are label maps
MAX_CHANNELS = 4  # prepared images are PNG: L, LA, RGB or RGBA (1-4 channels)
CASE_COLUMNS = ("case", "case_id", "patient", "patient_id")
KEY_COLUMNS = ("stem", "id", "image", "filename", "file", "name")


@dataclass
class RawItem:
    """One 2-D pair before resizing/normalisation.

    ``image``: float32 (H, W) or (H, W, 3) raw intensities; ``mask``: int64 (H, W) labels 0..K, or None for
    an unlabelled image; ``spacing``: (row, col) mm of the *original* grid or None; paths are relative to
    the source root.
    """

    id: str
    case: str
    image: np.ndarray
    mask: np.ndarray | None
    source_image: str
    source_mask: str | None
    slice_index: int | None = None
    spacing: tuple[float, float] | None = None


@dataclass
class SourceGroup:
    """Items normalised together: one 2-D image, or the chosen slices of one volume.

    ``stats``: the array whose intensity statistics define the normalisation (the whole volume for
    slices, the image itself for 2-D); ``dtype``: the on-disk dtype name (e.g. ``uint8``).
    """

    items: list[RawItem]
    stats: np.ndarray
    dtype: str


@dataclass
class Source:
    """A detected source folder: its kind, the pairs found, and metadata from the folder."""

    root: Path
    kind: str  # "folder" | "nnunet" | "nifti"
    pairs: list[tuple[str, list[Path], Path]]  # (case or stem, image path(s) (channels), mask path)
    labels: dict[str, int] | None = None
    modality: str | None = None
    volumetric: bool = False
    case_map: dict[str, str] = field(default_factory=dict)
    channel_names: list[str] | None = None  # named (non-RGB) channels of a multi-channel source, in file order


# ----------------------------------------------------------------------------------------------------
# file-level readers
# ----------------------------------------------------------------------------------------------------
def split_ext(path: Path) -> tuple[str, str]:
    """``a.nii.gz`` → ``("a", ".nii.gz")``; ``b.PNG`` → ``("b", ".png")``."""
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[:-7], ".nii.gz"
    return path.stem, path.suffix.lower()


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise fail(f"{path}: file not found; check the source folder")
    if path.stat().st_size == 0:
        raise fail(f"{path}: empty file (0 bytes); re-export it or remove it together with its pair")


def read_image_2d(path: Path) -> tuple[np.ndarray, str, tuple[float, float] | None]:
    """Read a 2-D image → (float32 (H, W) or (H, W, 3), on-disk dtype name, spacing (row, col) mm or None).

    PNG/JPG/BMP/TIFF via PIL (no spacing); a 2-D NIfTI (header zooms) and a single-frame DICOM
    (``PixelSpacing``, rescale applied) are accepted too. RGB with identical channels → (H, W).
    Multi-frame images and 3-D volumes are errors.
    """
    path = Path(path)
    _check_file(path)
    _, ext = split_ext(path)
    if ext in VOLUME_EXTS:
        arr, zooms = read_volume(path, allow_2d=True)
        if arr.ndim != 2:
            raise fail(f"{path}: 3-D volume of shape {tuple(arr.shape)} where a 2-D image was expected; "
                       f"put volumes in their own folder (images/ + labels/ with .nii.gz files)")
        return arr.astype(np.float32), "float32", (zooms[0], zooms[1])
    if ext == ".dcm":
        arr, spacing, ds = read_dicom(path)
        return arr, ("uint8" if int(getattr(ds, "BitsAllocated", 16)) == 8 and arr.min() >= 0 else "float32"), spacing
    arr = _read_pil(path)
    dtype = arr.dtype.name
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.shape[2] != 3:
            raise fail(f"{path}: image with {arr.shape[2]} channels; save it as grayscale or RGB")
        if np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 0], arr[:, :, 2]):
            arr = arr[:, :, 0]
        elif ext in JPEG_EXTS and _channel_spread(arr) <= 3:  # gray saved as RGB JPEG: chroma noise only
            arr = np.rint(arr.astype(np.float32).mean(axis=2)).astype(arr.dtype)
    return arr.astype(np.float32), dtype, None


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, Any]:
    """One single-frame DICOM file → (float32 (H, W) or (H, W, 3) with rescale slope/intercept applied,
    ``PixelSpacing`` (row, col) mm or None, the pydicom dataset). Multi-frame files are errors."""
    import pydicom

    path = Path(path)
    _check_file(path)
    try:
        ds = pydicom.dcmread(str(path))
        arr = np.asarray(ds.pixel_array)
    except Exception as err:  # pydicom raises InvalidDicomError, AttributeError (no pixels), codec errors…
        raise fail(f"{path}: unreadable DICOM ({type(err).__name__}: {err}); re-export it or remove it") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1 or arr.ndim > (3 if samples > 1 else 2):
        raise fail(f"{path}: multi-frame DICOM ({frames} frames, shape {tuple(arr.shape)}) where a 2-D image was "
                   f"expected; export one frame per file (a series folder images/<case>/*.dcm) or a NIfTI volume")
    arr = arr.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    spacing = None
    if "PixelSpacing" in ds and len(ds.PixelSpacing) == 2:
        spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    if arr.ndim == 3 and samples == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]
    return arr.astype(np.float32), spacing, ds


def read_dicom_series(folder: Path) -> tuple[np.ndarray, tuple[float, float, float], str | None]:
    """A folder of single-slice DICOM files → (float32 (rows, cols, slices), zooms (row, col, slice) mm,
    the DICOM Modality or None). Slices are sorted along the slice normal (ImagePositionPatient ·
    normal of ImageOrientationPatient), else by InstanceNumber, else by file name."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:
        raise fail(f"{folder}: DICOM series folder without .dcm files; add the slices or remove the folder")
    slices = []
    for p in files:
        arr, spacing, ds = read_dicom(p)
        if arr.ndim != 2:
            raise fail(f"{p}: colour DICOM slice in a series; only grayscale series are supported")
        pos = None
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            pos = float(np.dot(np.cross(iop[:3], iop[3:]), [float(v) for v in ds.ImagePositionPatient]))
        inst = int(getattr(ds, "InstanceNumber", 0) or 0)
        slices.append((pos, inst, p.name, arr, spacing, ds))
        if arr.shape != slices[0][3].shape:
            raise fail(f"{p}: slice size {arr.shape} differs from {files[0].name} {slices[0][3].shape}; "
                       f"a series must have one image size")
    if all(s[0] is not None for s in slices):
        slices.sort(key=lambda s: (s[0], s[1], s[2]))
        gaps = np.diff([s[0] for s in slices])
    else:
        slices.sort(key=lambda s: (s[1], s[2]))
        gaps = np.array([])
    dz = float(np.median(np.abs(gaps))) if len(gaps) and np.median(np.abs(gaps)) > 0 else \
        float(getattr(slices[0][5], "SliceThickness", 1.0) or 1.0)
    sp = slices[0][4] or (1.0, 1.0)
    vol = np.stack([s[3] for s in slices], axis=-1)
    if not np.all(np.isfinite(vol)):
        raise fail(f"{folder}: series contains NaN or inf values; fix or remove it")
    return vol, (sp[0], sp[1], dz), (str(getattr(slices[0][5], "Modality", "")) or None)


def _channel_spread(arr: np.ndarray) -> float:
    a = arr.astype(np.int32)
    return float(max(np.abs(a[..., 0] - a[..., 1]).max(), np.abs(a[..., 0] - a[..., 2]).max()))


def _read_pil(path: Path) -> np.ndarray:
    """PIL read → uint8/uint16/int32/float32 (H, W) or (H, W, C); one-line errors for bad files."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise fail(f"{path}: multi-frame image ({im.n_frames} frames) where a 2-D image was expected; "
                           f"export one frame per file or use a NIfTI volume folder")
            im.load()
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "LA":
                im = im.convert("L")
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except SynthpairError:
        raise
    except UnidentifiedImageError:
        raise fail(f"{path}: not a readable image; replace it with a valid PNG/JPG or remove the pair") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise fail(f"{path}: unreadable or truncated image ({err}); re-export it or remove the pair") from None
    if arr.dtype == np.uint16 or arr.dtype.kind in "iuf":
        return arr
    return arr.astype(np.float32)


def mask_to_labels(arr: np.ndarray, path: Path, *, lossy: bool = False) -> np.ndarray:
    """Raw mask values → int64 labels (H, W).

    ``{0, 255}`` (or ``{0, 1}``, ``{255}``) → binary ``{0, 1}``; integer values in ``0..MAX_LABEL`` are kept
    as labels. ``lossy=True`` (mask stored as JPEG) thresholds at 128 → ``{0, 1}``. Anything else is an
    error that says what was found.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise fail(f"{path}: colour mask (channels differ); save the mask as a grayscale label map "
                       f"(0 background, 1..K classes or 0/255)")
    if not np.all(np.isfinite(arr)):
        raise fail(f"{path}: mask contains NaN/inf; fix the label file")
    if lossy:
        return (arr > 127).astype(np.int64)
    values = np.unique(arr)
    if np.all(np.isin(values, (0, 255))):
        return (arr == 255).astype(np.int64)
    if np.all(values == np.round(values)) and values.min() >= 0 and values.max() <= MAX_LABEL:
        return arr.astype(np.int64)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    hint = (" — looks like a JPEG-compressed or interpolated mask" if len(values) > 8 else "")
    raise fail(f"{path}: mask values {{{shown}}} ({len(values)} distinct) are neither {{0, 255}} nor integer "
               f"labels 0..{MAX_LABEL}{hint}; re-export the mask losslessly (PNG) with 0/255 or 0..K labels")


def read_mask_2d(path: Path) -> np.ndarray:
    """Read a 2-D mask file → int64 labels (H, W) (see :func:`mask_to_labels`)."""
    path = Path(path)
    _check_file(path)
    _, ext = split_ext(path)
    if ext in VOLUME_EXTS:
        arr, _ = read_volume(path, allow_2d=True, what="mask")
        if arr.ndim != 2:
            raise fail(f"{path}: 3-D mask volume of shape {tuple(arr.shape)} where a 2-D mask was expected; "
                       f"put volumes in their own folder (images/ + labels/ with .nii.gz files)")
        return mask_to_labels(arr, path)
    return mask_to_labels(_read_pil(path), path, lossy=ext in JPEG_EXTS)


def read_volume(path: Path, *, allow_2d: bool = False, what: str = "image") -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a NIfTI file with nibabel → (float32 array (X, Y, Z) in voxel order, zooms per axis in mm).

    Trailing singleton axes beyond 3 are dropped; 4-D data, a 2-D array (unless ``allow_2d``) and
    NaN/inf values are errors.
    """
    import nibabel as nib

    path = Path(path)
    _check_file(path)
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as err:  # nibabel raises many kinds (ImageFileError, EOFError, zlib errors…)
        raise fail(f"{path}: unreadable or truncated NIfTI ({type(err).__name__}: {err}); "
                   f"re-export the volume or remove the case") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if allow_2d and arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3:
        raise fail(f"{path}: {arr.ndim}-D {what} of shape {tuple(arr.shape)}; expected a 3-D volume "
                   f"(split channels/time points into separate files)")
    if arr.ndim < 3 and not allow_2d:
        raise fail(f"{path}: 2-D {what} of shape {tuple(arr.shape)} where a 3-D volume was expected; "
                   f"put 2-D images in an images/ + masks/ folder of PNGs")
    if not np.all(np.isfinite(arr)):
        raise fail(f"{path}: {what} contains NaN or inf values; fix or remove the volume")
    return arr, (zooms + (1.0, 1.0, 1.0))[: max(arr.ndim, 3)]


# ----------------------------------------------------------------------------------------------------
# source detection and listing
# ----------------------------------------------------------------------------------------------------
def _listing(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """Stem → path for files with one of ``exts`` (hidden files skipped); duplicate stems are errors."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if any(q.suffix.lower() == ".dcm" for q in p.iterdir()):
                out[p.name] = p  # a DICOM series (one volume)
            continue
        if not p.is_file():
            continue
        stem, ext = split_ext(p)
        if ext not in exts:
            continue
        if stem in out:
            raise fail(f"{p}: two files with stem {stem!r} ({out[stem].name}, {p.name}); keep only one")
        out[stem] = p
    return out


def _match(images: dict[str, Path], masks: dict[str, Path], img_dir: Path, mask_dir: Path) -> None:
    for stem, p in images.items():
        if stem not in masks:
            raise fail(f"{p}: image without mask (no {mask_dir}/{stem}.*); add the mask or remove the image")
    for stem, p in masks.items():
        if stem not in images:
            raise fail(f"{p}: mask without image (no {img_dir}/{stem}.*); add the image or remove the mask")


def _read_metadata(path: Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """``metadata.csv`` → (rows, {lower-cased stripped column name: column}); ([], {}) when absent or empty.
    An unreadable file is a one-line error."""
    if not path.is_file():
        return [], {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise fail(f"{path}: unreadable CSV ({err}); fix it or remove it") from None
    if not rows:
        return [], {}
    return rows, {c.strip().lower(): c for c in rows[0].keys() if c}


def read_case_map(root: Path) -> dict[str, str]:
    """``metadata.csv`` with a case column (case/case_id/patient/patient_id) → {stem: case}; {} if none."""
    path = root / "metadata.csv"
    rows, cols = _read_metadata(path)
    if not rows:
        return {}
    case_col = next((cols[c] for c in CASE_COLUMNS if c in cols), None)
    if case_col is None:
        return {}
    key_col = next((cols[c] for c in KEY_COLUMNS if c in cols), None)
    if key_col is None:
        raise fail(f"{path}: has a {case_col!r} column but no image column ({', '.join(KEY_COLUMNS)}); "
                   f"add a 'stem' column naming each image")
    out = {}
    for row in rows:
        key = split_ext(Path(str(row[key_col]).strip()))[0]
        case = str(row[case_col]).strip()
        if key and case:
            out[key] = case
    return out


def detect_source(src: Path | str) -> Source:
    """Find the source kind of ``src`` and list its pairs (nothing is read yet except dataset.json)."""
    root = Path(src)
    if not root.is_dir():
        raise fail(f"{root}: source folder not found; pass a folder with images/ + masks/, an nnU-Net raw "
                   f"folder or images/ + labels/ NIfTI volumes")
    if (root / "imagesTr").is_dir():
        return _detect_nnunet(root)
    img_dir = root / "images"
    mask_dir = next((root / d for d in ("masks", "labels") if (root / d).is_dir()), None)
    if not img_dir.is_dir() or mask_dir is None:
        missing = "images/" if not img_dir.is_dir() else "masks/ (or labels/)"
        raise fail(f"{root}: no {missing} folder; expected images/ + masks/ (2-D), images/ + labels/ "
                   f"(NIfTI volumes) or an nnU-Net raw folder (imagesTr/, labelsTr/, dataset.json)")
    images = _listing(img_dir, IMAGE_EXTS + VOLUME_EXTS)
    masks = _listing(mask_dir, IMAGE_EXTS + VOLUME_EXTS)
    if not images:
        raise fail(f"{img_dir}: no images found (.png/.jpg/.tif/.nii.gz); add images or choose another folder")
    if not masks:
        raise fail(f"{mask_dir}: no masks found; add one mask per image with the same file stem")
    _match(images, masks, img_dir, mask_dir)
    volumetric = all(p.is_dir() or split_ext(p)[1] in VOLUME_EXTS for p in images.values())
    series = [p for p in images.values() if p.is_dir()]
    if series and not volumetric:
        raise fail(f"{series[0]}: DICOM series folder next to 2-D images in {img_dir}; keep 2-D images and "
                   f"volumes (NIfTI files or DICOM series folders) in separate source folders")
    modality = None
    dcm = next((q for p in images.values() for q in ([p] if p.is_file() else sorted(p.iterdir()))
                if q.suffix.lower() == ".dcm"), None)
    if dcm is not None:
        modality = _dicom_modality(dcm)
    if volumetric:
        for stem, p in masks.items():
            if split_ext(p)[1] not in VOLUME_EXTS:
                raise fail(f"{p}: 2-D mask for the volume {images[stem].name}; provide a NIfTI label volume")
    case_map = {} if volumetric else read_case_map(root)
    pairs = [(stem, [images[stem]], masks[stem]) for stem in sorted(images)]
    return Source(root=root, kind="nifti" if volumetric else "folder", pairs=pairs, volumetric=volumetric,
                  case_map=case_map, modality=modality)


def _dicom_modality(path: Path) -> str | None:
    import pydicom

    try:
        return str(pydicom.dcmread(str(path), stop_before_pixels=True).get("Modality", "")) or None
    except Exception:  # unreadable files are reported with their name when the pixels are read
        return None


def _detect_nnunet(root: Path) -> Source:
    import json

    djson = root / "dataset.json"
    if not djson.is_file():
        raise fail(f"{djson}: missing; an nnU-Net raw folder needs dataset.json with labels and channel_names")
    try:
        meta = json.loads(djson.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise fail(f"{djson}: not valid JSON ({err}); fix it") from None
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
        raise fail(f'{djson}: "labels" must map names to integer labels (region-based labels are not supported); write e.g. {{"background": 0, "lesion": 1}}')
    labels = {str(k): int(v) for k, v in sorted(labels.items(), key=lambda kv: kv[1])}
    channel_names = meta.get("channel_names") or meta.get("modality") or {}
    ending = str(meta.get("file_ending", ".nii.gz")).lower()
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not lab_dir.is_dir():
        raise fail(f"{lab_dir}: missing; an nnU-Net raw folder needs labelsTr/ next to imagesTr/")
    files = [p for p in sorted(img_dir.iterdir()) if p.is_file() and not p.name.startswith(".")
             and p.name.lower().endswith(ending)]
    if not files:
        raise fail(f"{img_dir}: no '*_0000{ending}' images; add images or fix file_ending in {djson.name}")
    by_case: dict[str, dict[int, Path]] = {}
    for p in files:
        stem = p.name[: -len(ending)]
        case, _, ch = stem.rpartition("_")
        if not case or not (len(ch) == 4 and ch.isdigit()):
            raise fail(f"{p}: nnU-Net image names are <case>_<XXXX>{ending} (channel suffix); rename it")
        by_case.setdefault(case, {})[int(ch)] = p
    n_ch = len(channel_names) if channel_names else max(len(v) for v in by_case.values())
    if not 1 <= n_ch <= MAX_CHANNELS:
        raise fail(f"{djson}: {n_ch} channels; synthpair stores 1 to {MAX_CHANNELS} channels per image (gray, "
                   f"gray+alpha, RGB or RGBA PNG); export at most {MAX_CHANNELS} channels (e.g. the contrasts you "
                   f"need) into another nnU-Net folder")
    names = _channel_name_list(channel_names, n_ch, djson)
    labels_found = {p.name[: -len(ending)]: p
                    for p in sorted(lab_dir.iterdir()) if p.is_file() and p.name.lower().endswith(ending)}
    pairs = []
    for case, chans in sorted(by_case.items()):
        if sorted(chans) != list(range(n_ch)):
            raise fail(f"{img_dir}/{case}_0000{ending}: case {case!r} has channels {sorted(chans)}, expected "
                       f"0..{n_ch - 1}; add the missing channel files")
        if case not in labels_found:
            raise fail(f"{chans[0]}: image without label (no {lab_dir}/{case}{ending}); add it or remove the case")
        pairs.append((case, [chans[k] for k in range(n_ch)], labels_found[case]))
    for case, p in labels_found.items():
        if case not in by_case:
            raise fail(f"{p}: label without image (no {img_dir}/{case}_0000{ending}); add it or remove the label")
    modality = names[0] if names else None
    rgb = n_ch == 3 and names is not None and [n.upper() for n in names] in (["R", "G", "B"], ["RED", "GREEN", "BLUE"])
    named = names if n_ch > 1 and not rgb else None
    if n_ch > 1 and names is None:
        named = [f"channel{k}" for k in range(n_ch)]
    return Source(root=root, kind="nnunet", pairs=pairs, labels=labels, modality=modality,
                  volumetric=ending in VOLUME_EXTS, case_map=nnunet_case_map(root, sorted(by_case)),
                  channel_names=named)


def _channel_name_list(channel_names: Any, n_ch: int, djson: Path) -> list[str] | None:
    """``channel_names`` of an nnU-Net dataset.json (``{"0": "T1", "1": "FLAIR"}``, or the older ``modality``
    dict) → names in channel order, or None when absent; one-line error for gaps or repeated names."""
    if not channel_names:
        return None
    if not isinstance(channel_names, dict):
        raise fail(f'{djson}: "channel_names" must map channel indices to names, e.g. {{"0": "T1", "1": "FLAIR"}}')
    got = {str(k): str(v).strip() for k, v in channel_names.items()}
    if sorted(got) != [str(k) for k in range(n_ch)]:
        raise fail(f'{djson}: "channel_names" keys {sorted(got)} must be "0".."{n_ch - 1}"; fix dataset.json')
    names = [got[str(k)] for k in range(n_ch)]
    if len({n.lower() for n in names}) != n_ch or not all(names):
        raise fail(f'{djson}: "channel_names" {names} must be distinct, non-empty names; fix dataset.json')
    return names


GROUP_COLUMNS = ("patient", "patient_id", "subject", "subject_id")
NNUNET_KEY_COLUMNS = ("case", "case_id", "identifier", *KEY_COLUMNS)


def nnunet_case_map(root: Path, cases: list[str]) -> dict[str, str]:
    """``metadata.csv`` of an nnU-Net raw folder → {nnU-Net case id: patient}, so ``prepare`` keeps a patient's
    cases (slices) on one side of every split. Needs a key column whose values are the case ids
    (``case``/``case_id``/``identifier``/stem…) and a group column (``patient``/``patient_id``/``subject``/
    ``subject_id``); {} when there is no metadata.csv or no group column. Every case must have a row."""
    path = root / "metadata.csv"
    rows, cols = _read_metadata(path)
    if not rows:
        return {}
    group = next((cols[c] for c in GROUP_COLUMNS if c in cols), None)
    if group is None:
        return {}
    known = set(cases)
    key = next((cols[c] for c in NNUNET_KEY_COLUMNS if c in cols and cols[c] != group
                and any(str(r[cols[c]]).strip() in known for r in rows)), None)
    if key is None:
        raise fail(f"{path}: has a {group!r} column but no column of nnU-Net case ids (e.g. 'case' with values like "
                   f"{cases[0]!r}); add one so slices can be grouped by {group}")
    out = {str(r[key]).strip(): str(r[group]).strip() for r in rows if str(r[key]).strip() in known
           and str(r[group]).strip()}
    missing = [c for c in cases if c not in out]
    if missing:
        raise fail(f"{path}: no {group!r} for case {missing[0]!r} ({len(missing)} case(s) missing); add a row per case "
                   f"or remove metadata.csv")
    return out


# ----------------------------------------------------------------------------------------------------
# reading pairs
# ----------------------------------------------------------------------------------------------------
def _rel(root: Path, p: Path) -> str:
    return str(p.relative_to(root))


def choose_slices(mask_vol: np.ndarray, axis: int, foreground_only: bool, empty_fraction: float,
                  rng: np.random.Generator) -> list[int]:
    """Slice indices along ``axis`` to keep: all, or those with foreground plus a seeded random
    ``empty_fraction`` (0..1, rounded) of the empty ones. Sorted ascending."""
    n = mask_vol.shape[axis]
    if not foreground_only:
        return list(range(n))
    other = tuple(a for a in range(mask_vol.ndim) if a != axis)
    has_fg = np.any(mask_vol > 0, axis=other)
    fg = np.flatnonzero(has_fg)
    empty = np.flatnonzero(~has_fg)
    k = int(round(empty_fraction * len(empty)))
    picked = rng.choice(empty, size=k, replace=False) if k > 0 else np.array([], dtype=int)
    return sorted(int(i) for i in np.concatenate([fg, picked]))


def _read_2d_pair(source: Source, stem: str, img_paths: list[Path], mask_path: Path) -> SourceGroup:
    read = [read_image_2d(p) for p in img_paths]
    spacing = read[0][2]
    chans = [(a, d) for a, d, _ in read]
    if len(chans) == 1:
        image, dtype = chans[0]
    else:
        for (c, _), p in zip(chans, img_paths):
            if c.ndim != 2:
                raise fail(f"{p}: channel file must be single-channel grayscale")
            if c.shape != chans[0][0].shape:
                raise fail(f"{p}: channel size {c.shape} differs from {img_paths[0].name} {chans[0][0].shape}")
        image, dtype = np.stack([c for c, _ in chans], axis=-1), chans[0][1]
    mask = read_mask_2d(mask_path)
    if image.shape[:2] != mask.shape:
        raise fail(f"{img_paths[0]}: image size {image.shape[:2]} differs from mask {mask_path.name} "
                   f"{mask.shape}; resize the mask to the image (nearest neighbour) or fix the pair")
    if not np.all(np.isfinite(image)):
        raise fail(f"{img_paths[0]}: image contains NaN or inf values; fix or remove it")
    case = source.case_map.get(stem, stem)
    item = RawItem(id=stem, case=case, image=image, mask=mask, source_image=_rel(source.root, img_paths[0]),
                   source_mask=_rel(source.root, mask_path), spacing=spacing)
    return SourceGroup(items=[item], stats=image, dtype=dtype)


def _read_volume_pair(source: Source, case: str, img_paths: list[Path], mask_path: Path, *, axis: int,
                      foreground_only: bool, empty_fraction: float, seed: int) -> SourceGroup:
    vols = [read_dicom_series(p)[:2] if p.is_dir() else read_volume(p) for p in img_paths]
    vol, zooms = vols[0]
    if axis not in (0, 1, 2):
        raise fail(f"axis={axis}: slicing axis must be 0, 1 or 2")
    for (v, _), p in zip(vols[1:], img_paths[1:]):
        if v.shape != vol.shape:
            raise fail(f"{p}: channel volume shape {v.shape} differs from {img_paths[0].name} {vol.shape}")
    mvol, _ = read_volume(mask_path, what="label volume")
    if mvol.shape != vol.shape:
        raise fail(f"{img_paths[0]}: volume shape {vol.shape} differs from label {mask_path.name} {mvol.shape}; "
                   f"resample the labels to the image grid")
    if np.any(mvol != np.round(mvol)) or mvol.min() < 0 or mvol.max() > MAX_LABEL:
        raise fail(f"{mask_path}: label volume values must be integers 0..{MAX_LABEL}; fix the label file")
    mvol = mvol.astype(np.int64)
    rng = np.random.default_rng([int(seed), zlib.crc32(case.encode())])
    keep = choose_slices(mvol, axis, foreground_only, empty_fraction, rng)
    r_ax, c_ax = [a for a in range(3) if a != axis]
    spacing = (float(zooms[r_ax]), float(zooms[c_ax]))
    items = []
    for i in keep:
        chans = [np.take(v, i, axis=axis) for v, _ in vols]
        image = chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)
        items.append(RawItem(id=f"{case}_s{i:04d}", case=source.case_map.get(case, case), image=image.astype(np.float32),
                             mask=np.take(mvol, i, axis=axis), source_image=_rel(source.root, img_paths[0]),
                             source_mask=_rel(source.root, mask_path), slice_index=i, spacing=spacing))
    stats = vol if len(vols) == 1 else np.stack([v for v, _ in vols], axis=-1)
    return SourceGroup(items=items, stats=stats, dtype="float32")


def iter_source(source: Source, *, axis: int = 2, foreground_only: bool = False, empty_fraction: float = 0.0,
                seed: int = 0) -> Iterator[SourceGroup]:
    """Read the pairs of ``source`` one by one (a volume yields its chosen slices as one group)."""
    for key, img_paths, mask_path in source.pairs:
        if source.volumetric:
            yield _read_volume_pair(source, key, img_paths, mask_path, axis=axis, foreground_only=foreground_only,
                                    empty_fraction=empty_fraction, seed=seed)
        else:
            yield _read_2d_pair(source, key, img_paths, mask_path)


# ----------------------------------------------------------------------------------------------------
# unlabelled images (prepare --unlabelled DIR, or SRC/unlabelled/)
# ----------------------------------------------------------------------------------------------------
_MASK_LIKE = ("_mask", "_seg", "_label", "_labels", "_gt")


def list_unlabelled(folder: Path | str) -> list[tuple[str, Path]]:
    """Images of an unlabelled folder (``DIR/*`` or ``DIR/images/*``: 2-D files, NIfTI volumes, DICOM series
    folders) → [(stem, path)] sorted by stem. A folder that holds masks is an error: unlabelled means no mask.
    (An nnU-Net raw folder's ``imagesTs`` is a test set, never unlabelled training data: pass it nowhere.)"""
    import re

    folder = Path(folder)
    if not folder.is_dir():
        raise fail(f"{folder}: unlabelled image folder not found; pass a folder of images (no masks)")
    for sub in ("masks", "labels", "labelsTr"):
        if (folder / sub).is_dir():
            raise fail(f"{folder / sub}: the unlabelled folder holds masks; put image+mask pairs in the labelled "
                       f"source (images/ + masks/) and keep only images in the unlabelled folder")
    img_dir = folder / "images" if (folder / "images").is_dir() else folder
    files = _listing(img_dir, IMAGE_EXTS + VOLUME_EXTS)
    pat = re.compile("(" + "|".join(_MASK_LIKE) + r")(_\d+)?$", re.IGNORECASE)
    masks = [p for stem, p in files.items() if pat.search(stem)]
    if masks:
        raise fail(f"{masks[0]}: looks like a mask ({len(masks)} file(s) named *_mask/_seg/_label) in the "
                   f"unlabelled folder; remove the masks (or pair them with their images in the labelled source)")
    if not files:
        raise fail(f"{img_dir}: no images found (.png/.jpg/.tif/.nii.gz/.dcm); add images or drop --unlabelled")
    return sorted(files.items())


def iter_unlabelled(folder: Path | str, files: list[tuple[str, Path]], *, axis: int = 2
                    ) -> Iterator[SourceGroup]:
    """Read the images of :func:`list_unlabelled` one by one: a 2-D file gives one item (``id`` = its stem,
    ``case`` = its stem); a volume or DICOM series gives all its slices along ``axis`` (``<stem>_s<i>``,
    case = the stem). Items have ``mask=None``."""
    root = Path(folder)
    for stem, p in files:
        rel = str(p.relative_to(root))
        if p.is_dir() or split_ext(p)[1] in VOLUME_EXTS:
            vol, zooms = (read_dicom_series(p)[:2] if p.is_dir() else read_volume(p))
            r_ax, c_ax = [a for a in range(3) if a != axis]
            items = [RawItem(id=f"{stem}_s{i:04d}", case=stem, image=np.take(vol, i, axis=axis).astype(np.float32),
                             mask=None, source_image=rel, source_mask=None, slice_index=i,
                             spacing=(float(zooms[r_ax]), float(zooms[c_ax]))) for i in range(vol.shape[axis])]
            yield SourceGroup(items=items, stats=vol, dtype="float32")
            continue
        image, dtype, spacing = read_image_2d(p)
        if not np.all(np.isfinite(image)):
            raise fail(f"{p}: image contains NaN or inf values; fix or remove it")
        yield SourceGroup(items=[RawItem(id=stem, case=stem, image=image, mask=None, source_image=rel,
                                         source_mask=None, spacing=spacing)], stats=image, dtype=dtype)


def source_summary(source: Source) -> dict[str, Any]:
    """Small JSON-able description of a source (kind, number of pairs) for logs and dataset.json."""
    return {"kind": source.kind, "pairs": len(source.pairs), "volumetric": source.volumetric}
