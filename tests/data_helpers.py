"""Helpers that write tiny *source* folders (the inputs of ``prepare``) for the data-layer tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """uint8 (h, w) in {0, 1}: a filled disk."""
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.uint8)


def textured(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A distinct smooth random grayscale uint8 image (h, w) (blurred noise, so thumbnails differ)."""
    from scipy import ndimage

    n = ndimage.gaussian_filter(rng.standard_normal((h, w)), 3)
    n = (n - n.min()) / (np.ptp(n) + 1e-9)
    return (n * 200 + 20).astype(np.uint8)


def write_png_folder(root: Path, n: int = 6, h: int = 40, w: int = 48, *, rgb: bool = False,
                     image_ext: str = ".png", seed: int = 0, labels: bool = False) -> Path:
    """``root/images/img_XX<ext>`` + ``root/masks/img_XX.png`` ({0,255}, or 0..2 labels if ``labels``)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = textured(rng, h, w)
        m = disk(h, w, h / 2 + rng.uniform(-4, 4), w / 2 + rng.uniform(-4, 4), rng.uniform(5, 10))
        if rgb:
            img = np.stack([img, np.roll(img, 3, axis=0), 255 - img], axis=-1)
        Image.fromarray(img).save(root / "images" / f"img_{i:02d}{image_ext}")
        mask = m * (1 + i % 2) if labels else m * 255
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"img_{i:02d}.png")
    return root


def write_nifti(path: Path, arr: np.ndarray, zooms=(0.8, 0.9, 2.5)) -> Path:
    """Save ``arr`` as NIfTI with a diagonal affine of ``zooms`` (mm)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag(list(zooms)[: 3] + [1.0])
    nib.save(nib.Nifti1Image(np.asarray(arr), aff), str(path))
    return path


def volume_pair(rng: np.random.Generator, shape=(20, 24, 10), fg_slices=range(3, 7)) -> tuple[np.ndarray, np.ndarray]:
    """A float32 volume (X, Y, Z) and int16 labels with a box of foreground in ``fg_slices`` along Z."""
    vol = rng.normal(100, 20, shape).astype(np.float32)
    lab = np.zeros(shape, np.int16)
    for z in fg_slices:
        lab[5:12, 6:14, z] = 1
    vol[lab > 0] += 80
    return vol, lab


def write_nifti_folder(root: Path, n_cases: int = 3, shape=(20, 24, 10), zooms=(0.8, 0.9, 2.5),
                       label_dir: str = "labels", seed: int = 0) -> Path:
    """``root/images/case<k>.nii.gz`` + ``root/<label_dir>/case<k>.nii.gz`` (foreground on z = 3..6)."""
    rng = np.random.default_rng(seed)
    for k in range(n_cases):
        vol, lab = volume_pair(rng, shape)
        write_nifti(root / "images" / f"case{k}.nii.gz", vol, zooms)
        write_nifti(root / label_dir / f"case{k}.nii.gz", lab, zooms)
    return root


def write_nnunet_folder(root: Path, n_cases: int = 3, shape=(20, 24, 10), zooms=(1.0, 1.0, 3.0),
                        channel: str = "CT", seed: int = 0) -> Path:
    """nnU-Net raw: dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz (labels 0..2)."""
    rng = np.random.default_rng(seed)
    for k in range(n_cases):
        vol, lab = volume_pair(rng, shape)
        lab[14:18, 2:6, 4] = 2
        vol = vol * 5 - 400  # HU-like
        write_nifti(root / "imagesTr" / f"pat{k:03d}_0000.nii.gz", vol, zooms)
        write_nifti(root / "labelsTr" / f"pat{k:03d}.nii.gz", lab, zooms)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return root


def write_dicom(path: Path, arr: np.ndarray, *, spacing=(0.7, 0.6), z: float = 0.0, instance: int = 1,
                modality: str = "CT", intercept: float = -1024.0, frames: int = 1) -> Path:
    """A minimal single-frame (or ``frames``-frame) int16 DICOM file with spacing, position and rescale."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    data = np.asarray(arr, np.int16)
    ds.Rows, ds.Columns = data.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["0", "0", str(z)]
    ds.InstanceNumber = instance
    ds.RescaleSlope, ds.RescaleIntercept = "1", str(intercept)
    ds.PixelData = data.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path
