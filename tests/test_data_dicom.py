"""DICOM: single 2-D files in a folder source (PixelSpacing kept) and DICOM series as volumes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_helpers import write_dicom, write_nifti
from synthpair.data.dataset import PreparedDataset
from synthpair.data.prepare import PrepareConfig, prepare_dataset
from synthpair.data.readers import detect_source, iter_source, read_dicom_series
from synthpair.errors import SynthpairError


def test_dicom_2d_files_with_spacing(tmp_path):
    src = tmp_path / "s"
    for k in range(2):
        img = np.full((20, 30), 1024 + 40 * k, np.int16)
        img[5:10, 5:12] += 300
        write_dicom(src / "images" / f"d{k}.dcm", img, spacing=(0.5, 0.8))
        m = np.zeros((20, 30), np.uint8)
        m[5:10, 5:12] = 255
        (src / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save(src / "masks" / f"d{k}.png")
    source = detect_source(src)
    assert source.kind == "folder" and source.modality == "CT"
    it = next(iter_source(source)).items[0]
    assert it.spacing == (0.5, 0.8) and it.image[0, 0] == pytest.approx(0.0)  # rescale intercept applied
    with pytest.raises(SynthpairError, match="near-duplicate"):  # the two flat images look identical
        prepare_dataset(src, tmp_path / "d", PrepareConfig(size=10, folds=2), progress=False)
    cfg = PrepareConfig(size=10, folds=2, dedup=False)
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "d", cfg, progress=False))
    assert ds.modality == "CT" and ds.spacing_of("d0") == pytest.approx((0.5 * 20 / 10, 0.8 * 30 / 10))


def test_dicom_series_volume_sorted_by_position(tmp_path):
    src = tmp_path / "v"
    for case in ("a", "b"):
        lab = np.zeros((16, 18, 5), np.int16)
        lab[4:9, 4:9, 2] = 1
        write_nifti(src / "labels" / f"{case}.nii.gz", lab)
        for z in range(5):  # written in scrambled instance/file order; positions define the order
            sl = np.full((16, 18), 1000 + 10 * z, np.int16)
            write_dicom(src / "images" / case / f"f{(z * 3) % 5}.dcm", sl, spacing=(0.7, 0.6), z=2.0 * z,
                        instance=5 - z)
    vol, zooms, modality = read_dicom_series(src / "images" / "a")
    assert vol.shape == (16, 18, 5) and zooms == pytest.approx((0.7, 0.6, 2.0)) and modality == "CT"
    assert [vol[0, 0, z] for z in range(5)] == pytest.approx([1000 + 10 * z - 1024 for z in range(5)])
    source = detect_source(src)
    assert source.kind == "nifti" and source.volumetric
    items = [it for g in iter_source(source, foreground_only=True) for it in g.items]
    assert [it.id for it in items] == ["a_s0002", "b_s0002"] and items[0].spacing == pytest.approx((0.7, 0.6))
    assert items[0].source_image == "images/a"


def test_multiframe_dicom_is_3d_error(tmp_path):
    src = tmp_path / "s"
    write_dicom(src / "images" / "x.dcm", np.zeros((3, 8, 8), np.int16), frames=3)
    (src / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "masks" / "x.png")
    with pytest.raises(SynthpairError, match=r"x\.dcm: multi-frame DICOM"):
        prepare_dataset(src, tmp_path / "out", PrepareConfig(size=8, folds=2), progress=False)
    assert not (tmp_path / "out").exists()
