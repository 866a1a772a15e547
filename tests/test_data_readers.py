"""Source readers: 2-D folders (PNG/JPG, gray/RGB, labels), NIfTI volumes (slicing, spacing), nnU-Net raw."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_helpers import write_nifti_folder, write_nnunet_folder, write_png_folder
from synthpair.data.readers import choose_slices, detect_source, iter_source, mask_to_labels, read_case_map
from synthpair.errors import SynthpairError


def _items(source, **kw):
    return [it for g in iter_source(source, **kw) for it in g.items]


def test_folder_png_gray_binary(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    source = detect_source(src)
    assert source.kind == "folder" and not source.volumetric and len(source.pairs) == 3
    items = _items(source)
    assert [it.id for it in items] == ["img_00", "img_01", "img_02"]
    it = items[0]
    assert it.image.shape == (40, 48) and it.image.dtype == np.float32
    assert set(np.unique(it.mask)) == {0, 1}
    assert it.case == "img_00" and it.spacing is None and it.slice_index is None
    assert it.source_image == "images/img_00.png" and it.source_mask == "masks/img_00.png"
    raw = np.asarray(Image.open(src / "images" / "img_00.png"))
    assert np.array_equal(it.image, raw.astype(np.float32))


def test_folder_jpg_rgb_and_gray_rgb(tmp_path):
    src = write_png_folder(tmp_path / "s", n=2, rgb=True, image_ext=".jpg")
    items = _items(detect_source(src))
    assert items[0].image.shape == (40, 48, 3) and items[0].source_image.endswith(".jpg")
    assert not np.allclose(items[0].image[..., 0], items[0].image[..., 2], atol=20)
    # a gray picture saved as RGB JPEG (chroma noise only) is read as grayscale
    g = np.asarray(Image.open(write_png_folder(tmp_path / "g", n=1) / "images" / "img_00.png"))
    Image.fromarray(np.stack([g] * 3, -1)).save(src / "images" / "img_00.jpg", quality=95)
    first = _items(detect_source(src))[0]
    assert first.image.shape == (40, 48) and np.abs(first.image - g).mean() < 3


def test_rgb_png_identical_channels_becomes_gray(tmp_path):
    src = write_png_folder(tmp_path / "s", n=1)
    g = np.asarray(Image.open(src / "images" / "img_00.png"))
    Image.fromarray(np.stack([g] * 3, -1)).save(src / "images" / "img_00.png")
    it = _items(detect_source(src))[0]
    assert it.image.shape == (40, 48) and np.array_equal(it.image, g.astype(np.float32))


def test_label_masks_kept_and_jpeg_masks_thresholded(tmp_path):
    src = write_png_folder(tmp_path / "s", n=4, labels=True)
    labs = set()
    for it in _items(detect_source(src)):
        labs |= set(np.unique(it.mask).tolist())
    assert labs == {0, 1, 2}
    noisy = np.array([[0, 3, 250], [255, 8, 247]])
    assert np.array_equal(mask_to_labels(noisy, "m.jpg", lossy=True), [[0, 0, 1], [1, 0, 1]])
    assert np.array_equal(mask_to_labels(np.array([[0, 255]]), "m.png"), [[0, 1]])


def test_metadata_csv_case_column(tmp_path):
    src = write_png_folder(tmp_path / "s", n=3)
    (src / "metadata.csv").write_text("stem,patient_id\nimg_00,P1\nimg_01,P1\nimg_02,P2\n")
    assert read_case_map(src) == {"img_00": "P1", "img_01": "P1", "img_02": "P2"}
    assert [it.case for it in _items(detect_source(src))] == ["P1", "P1", "P2"]


def test_nifti_slicing_spacing_and_ids(tmp_path):
    src = write_nifti_folder(tmp_path / "v", n_cases=2, shape=(20, 24, 10), zooms=(0.8, 0.9, 2.5))
    source = detect_source(src)
    assert source.kind == "nifti" and source.volumetric
    items = _items(source, axis=2)
    assert len(items) == 20
    it = items[4]
    assert it.id == "case0_s0004" and it.case == "case0" and it.slice_index == 4
    assert it.image.shape == (20, 24) and it.spacing == pytest.approx((0.8, 0.9))
    assert it.source_image == "images/case0.nii.gz" and it.source_mask == "labels/case0.nii.gz"
    assert it.mask.sum() == 7 * 8
    side = _items(source, axis=0)
    assert len(side) == 40 and side[0].image.shape == (24, 10) and side[0].spacing == pytest.approx((0.9, 2.5))


def test_nifti_foreground_only_and_empty_fraction(tmp_path):
    src = write_nifti_folder(tmp_path / "v", n_cases=2, shape=(20, 24, 10), label_dir="masks")
    source = detect_source(src)
    fg = _items(source, foreground_only=True)
    assert [it.slice_index for it in fg if it.case == "case0"] == [3, 4, 5, 6]
    half = _items(source, foreground_only=True, empty_fraction=0.5, seed=1)
    c0 = [it.slice_index for it in half if it.case == "case0"]
    assert len(c0) == 4 + 3 and set(c0) >= {3, 4, 5, 6}
    again = [it.slice_index for it in _items(source, foreground_only=True, empty_fraction=0.5, seed=1)
             if it.case == "case0"]
    assert again == c0
    everything = _items(source, foreground_only=True, empty_fraction=1.0)
    assert len(everything) == 20


def test_choose_slices_counts():
    m = np.zeros((4, 4, 12), int)
    m[..., [2, 9]] = 1
    rng = np.random.default_rng(0)
    assert choose_slices(m, 2, False, 0.0, rng) == list(range(12))
    assert choose_slices(m, 2, True, 0.0, rng) == [2, 9]
    assert len(choose_slices(m, 2, True, 0.25, rng)) == 2 + round(0.25 * 10)


def test_nnunet_raw(tmp_path):
    src = write_nnunet_folder(tmp_path / "nn", n_cases=2, channel="CT")
    source = detect_source(src)
    assert source.kind == "nnunet" and source.modality == "CT"
    assert source.labels == {"background": 0, "liver": 1, "tumour": 2}
    items = _items(source)
    assert len(items) == 20 and items[0].id == "pat000_s0000" and items[0].case == "pat000"
    assert items[0].spacing == pytest.approx((1.0, 1.0))
    assert set(np.unique(items[4].mask)) == {0, 1, 2}


def test_nnunet_png_2d(tmp_path):
    import json

    root = tmp_path / "nn2d"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for c in ("a", "b"):
        Image.fromarray(np.full((8, 10), 60, np.uint8)).save(root / "imagesTr" / f"{c}_0000.png")
        m = np.zeros((8, 10), np.uint8)
        m[2:4, 2:5] = 1
        Image.fromarray(m).save(root / "labelsTr" / f"{c}.png")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "US"}, "labels": {"background": 0, "lesion": 1},
                                                   "file_ending": ".png"}))
    items = _items(detect_source(root))
    assert [it.id for it in items] == ["a", "b"] and items[0].image.shape == (8, 10)
    assert items[0].mask.sum() == 6


def test_missing_channel_in_nnunet_is_error(tmp_path):
    src = write_nnunet_folder(tmp_path / "nn", n_cases=1)
    (src / "labelsTr" / "pat000.nii.gz").unlink()
    with pytest.raises(SynthpairError, match="pat000_0000.nii.gz"):
        detect_source(src)
