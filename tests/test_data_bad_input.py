"""Bad input to prepare: one-line SynthpairError naming the file and the fix; no output left behind."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_helpers import write_nifti, write_nifti_folder, write_png_folder
from synthpair.data.prepare import PrepareConfig, prepare_dataset
from synthpair.errors import SynthpairError

CFG = PrepareConfig(size=16, folds=2)


def _fails(src, tmp_path, *needles, cfg=CFG):
    out = tmp_path / "out"
    with pytest.raises(SynthpairError) as exc:
        prepare_dataset(src, out, cfg, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    return msg


def test_missing_and_empty_folders(tmp_path):
    _fails(tmp_path / "nope", tmp_path, "nope", "not found")
    (tmp_path / "e" / "images").mkdir(parents=True)
    (tmp_path / "e" / "masks").mkdir()
    _fails(tmp_path / "e", tmp_path, "images", "no images found")
    (tmp_path / "m" / "images").mkdir(parents=True)
    _fails(tmp_path / "m", tmp_path, "no masks/")


def test_image_without_mask_and_mask_without_image(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    (src / "masks" / "img_01.png").unlink()
    _fails(src, tmp_path, "img_01.png", "image without mask")
    src2 = write_png_folder(tmp_path / "s2", n=3)
    (src2 / "images" / "img_02.png").unlink()
    _fails(src2, tmp_path, "img_02.png", "mask without image")


def test_size_mismatch(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(src / "masks" / "img_01.png")
    _fails(src, tmp_path, "img_01.png", "differs from mask")


def test_truncated_and_zero_byte_files(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    data = (src / "images" / "img_01.png").read_bytes()
    (src / "images" / "img_01.png").write_bytes(data[: len(data) // 2])
    _fails(src, tmp_path, "img_01.png", "truncated")
    src2 = write_png_folder(tmp_path / "s2", n=3)
    (src2 / "masks" / "img_02.png").write_bytes(b"")
    _fails(src2, tmp_path, "img_02.png", "0 bytes")
    src3 = write_png_folder(tmp_path / "s3", n=3)
    (src3 / "images" / "img_00.png").write_bytes(b"this is not an image")
    _fails(src3, tmp_path, "img_00.png", "not a readable image")


def test_jpeg_like_mask_values(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    m = np.asarray(Image.open(src / "masks" / "img_01.png")).astype(float)
    from scipy import ndimage
    blurred = np.clip(ndimage.gaussian_filter(m, 2) + np.random.default_rng(0).integers(0, 9, m.shape), 0, 255)
    Image.fromarray(blurred.astype(np.uint8)).save(src / "masks" / "img_01.png")
    msg = _fails(src, tmp_path, "img_01.png", "neither {0, 255}", "JPEG")
    assert "losslessly" in msg


def test_volume_in_2d_folder_and_multiframe(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    (src / "images" / "img_01.png").unlink()
    write_nifti(src / "images" / "img_01.nii.gz", np.zeros((40, 48, 5), np.float32))
    _fails(src, tmp_path, "img_01.nii.gz", "3-D volume", "2-D image was expected")
    src2 = write_png_folder(tmp_path / "s2", n=3)
    (src2 / "images" / "img_02.png").unlink()
    frames = [Image.fromarray(np.full((40, 48), v, np.uint8)) for v in (10, 90, 200)]
    frames[0].save(src2 / "images" / "img_02.tif", save_all=True, append_images=frames[1:])
    _fails(src2, tmp_path, "img_02.tif", "multi-frame")


def test_2d_image_given_as_volume(tmp_path):
    src = write_nifti_folder(tmp_path / "v", n_cases=2)
    write_nifti(src / "images" / "case1.nii.gz", np.zeros((20, 24), np.float32))
    _fails(src, tmp_path, "case1.nii.gz", "2-D image", "3-D volume was expected")


def test_nan_in_volume(tmp_path):
    src = write_nifti_folder(tmp_path / "v", n_cases=2)
    vol = np.ones((20, 24, 10), np.float32)
    vol[3, 4, 5] = np.nan
    write_nifti(src / "images" / "case0.nii.gz", vol)
    _fails(src, tmp_path, "case0.nii.gz", "NaN")


def test_label_volume_shape_mismatch_and_bad_labels(tmp_path):
    src = write_nifti_folder(tmp_path / "v", n_cases=2)
    write_nifti(src / "labels" / "case0.nii.gz", np.zeros((20, 24, 9), np.int16))
    _fails(src, tmp_path, "case0.nii.gz", "differs from label")
    src2 = write_nifti_folder(tmp_path / "v2", n_cases=2)
    write_nifti(src2 / "labels" / "case1.nii.gz", np.full((20, 24, 10), 0.5, np.float32))
    _fails(src2, tmp_path, "case1.nii.gz", "integers")


def test_fewer_cases_than_folds(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    _fails(src, tmp_path, "3 case(s)", "5 folds", "--folds", cfg=PrepareConfig(size=16, folds=5))


def test_existing_output_kept(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SynthpairError, match="already exists"):
        prepare_dataset(src, out, CFG, progress=False)
    assert (out / "keep.txt").read_text() == "x"
    # a failing overwrite leaves the previous folder intact
    (src / "masks" / "img_00.png").unlink()
    with pytest.raises(SynthpairError, match="img_00"):
        prepare_dataset(src, out, CFG, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "x"


def test_bad_config_values():
    with pytest.raises(SynthpairError, match="empty_fraction"):
        PrepareConfig(empty_fraction=2.0)
    with pytest.raises(SynthpairError, match="normalisation"):
        PrepareConfig(normalisation="zscore")
    with pytest.raises(SynthpairError, match="folds"):
        PrepareConfig(folds=1)


def test_nnunet_bad_dataset_json(tmp_path):
    from data_helpers import write_nnunet_folder

    src = write_nnunet_folder(tmp_path / "nn", n_cases=2)
    (src / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": [1, 2]}}))
    _fails(src, tmp_path, "dataset.json", "labels")
