"""Multi-channel (non-RGB) sources: two physically different phantom contrasts from one tissue map, nnU-Net folders
with several ``_000k`` channels and ``channel_names``, patient grouping from metadata.csv, 2/3/4-channel storage."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from synthpair.data.dataset import PreparedDataset
from synthpair.data.phantoms import SEQUENCES, TISSUES, mr_signal, phantom_contrasts, write_phantom_nnunet
from synthpair.data.prepare import PrepareConfig, prepare_dataset
from synthpair.data.readers import detect_source
from synthpair.errors import SynthpairError


def test_two_contrasts_are_rendered_from_one_tissue_map():
    # the signal equations give the textbook contrast: CSF dark in T1w and bright in T2w, white matter brighter
    # than grey in T1w and darker in T2w, CSF nulled by FLAIR
    assert mr_signal("csf", "T1w") < mr_signal("white", "T1w") and mr_signal("csf", "T2w") > mr_signal("white", "T2w")
    assert mr_signal("white", "T1w") > mr_signal("grey", "T1w") and mr_signal("white", "T2w") < mr_signal("grey", "T2w")
    assert mr_signal("csf", "FLAIR") < 0.1 * mr_signal("lesion", "FLAIR")
    assert all(mr_signal("air", s) == 0 for s in SEQUENCES) and set(TISSUES) >= {"csf", "grey", "white", "lesion"}
    imgs, lab = phantom_contrasts(5, 64, 0, ("T1w", "T2w"), lesion=True)
    again, lab2 = phantom_contrasts(5, 64, 0, ("T1w", "T2w"), lesion=True)
    assert imgs.shape == (2, 64, 64) and imgs.dtype == np.uint8 and np.array_equal(imgs, again)
    assert np.array_equal(lab, lab2) and lab.any()
    t1, t2 = imgs.astype(float)
    head = t2 > 20
    assert np.corrcoef(t1[head], t2[head])[0, 1] < 0.5    # different contrasts, not a rescaled copy
    assert t2[lab > 0].mean() > np.median(t2[head])        # lesion bright on T2w (long T2)
    # the same anatomy: the head outline is where both contrasts have signal
    assert ((t1 > 20) == head).mean() > 0.9
    no_lesion, lab0 = phantom_contrasts(5, 64, 0, ("T1w", "T2w"), lesion=False)
    assert not lab0.any()
    with pytest.raises(SynthpairError, match="contrast 'T3w'"):
        phantom_contrasts(0, 32, 0, ("T3w",))


@pytest.mark.parametrize("contrasts,mode", [(("T1w", "T2w"), "LA"), (("T1", "FLAIR", "T1c"), "RGB"),
                                            (("T1w", "T2w", "PDw", "FLAIR"), "RGBA")])
def test_nnunet_named_channels_are_read_as_channels_not_rgb(tmp_path, contrasts, mode):
    seqs = tuple({"T1": "T1w", "T1c": "T1w"}.get(c, c) for c in contrasts)
    src = write_phantom_nnunet(tmp_path / "src", 8, size=16, contrasts=seqs, per_patient=2)
    if contrasts != seqs:  # names as in lgg-mri: T1, FLAIR, T1c
        meta = json.loads((src / "dataset.json").read_text())
        meta["channel_names"] = {str(k): c for k, c in enumerate(contrasts)}
        (src / "dataset.json").write_text(json.dumps(meta))
    source = detect_source(src)
    assert source.channel_names == list(contrasts) and source.kind == "nnunet"
    data = prepare_dataset(src, tmp_path / "data", PrepareConfig(size=16, folds=2, dedup=False), progress=False)
    ds = PreparedDataset.open(data)
    assert ds.channels == len(contrasts) and ds.info["channel_names"] == list(contrasts)
    assert ds.info["normalisation"]["per_channel"] is True and ds.modality == "MR"
    with Image.open(data / "images" / f"{ds.ids[0]}.png") as im:
        assert im.mode == mode
    x = ds.load_images(ds.ids)
    assert x.shape == (8, len(contrasts), 16, 16)
    # each channel normalised on its own: every channel spans [-1, 1] in every image
    assert np.allclose(x.max(axis=(2, 3)), 1.0) and np.allclose(x.min(axis=(2, 3)), -1.0)
    rng = ds.items[0]["intensity_range"]
    assert len(rng) == len(contrasts) and all(len(r) == 2 for r in rng)
    # the channels are the source files in order (not a colour conversion): channel k matches _000k's ranking
    raw = np.asarray(Image.open(src / "imagesTr" / f"{ds.ids[0]}_0001.png").resize((16, 16), Image.BILINEAR), float)
    assert np.corrcoef(raw.ravel(), x[0, 1].ravel())[0, 1] > 0.9


def test_rgb_channel_names_stay_rgb(tmp_path):
    src = write_phantom_nnunet(tmp_path / "src", 4, size=16, contrasts=("T1w", "T2w", "PDw"), per_patient=1)
    meta = json.loads((src / "dataset.json").read_text())
    meta["channel_names"] = {"0": "R", "1": "G", "2": "B"}
    (src / "dataset.json").write_text(json.dumps(meta))
    assert detect_source(src).channel_names is None
    data = prepare_dataset(src, tmp_path / "data", PrepareConfig(size=16, folds=2, dedup=False), progress=False)
    info = PreparedDataset.open(data).info
    assert "channel_names" not in info and info["channels"] == 3 and info["normalisation"]["method"] == "fixed"


def test_patients_from_metadata_csv_stay_on_one_side_of_every_split(tmp_path):
    src = write_phantom_nnunet(tmp_path / "src", 18, size=16, contrasts=("T1w", "T2w"), per_patient=3)
    data = prepare_dataset(src, tmp_path / "data", PrepareConfig(size=16, folds=3, dedup=False), progress=False)
    ds = PreparedDataset.open(data)
    assert {it["case"] for it in ds.items} == {f"ph{p:03d}" for p in range(6)}
    for f in range(3):
        tr, te = ds.split(f)
        pt = lambda ids: {i.split("_")[0] for i in ids}  # noqa: E731  (patient of a case id phXXX_YYY)
        assert not pt(tr) & pt(te) and len(tr) + len(te) == 18


def test_multichannel_refusals(tmp_path):
    src = write_phantom_nnunet(tmp_path / "src", 4, size=16, contrasts=("T1w", "T2w"), per_patient=2)
    # a missing patient row
    rows = (src / "metadata.csv").read_text().splitlines()
    (src / "metadata.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(SynthpairError, match="metadata.csv: no 'patient' for case"):
        detect_source(src)
    # a patient column but no column of case ids
    (src / "metadata.csv").write_text("image,patient\nfoo,p1\n")
    with pytest.raises(SynthpairError, match="no column of nnU-Net case ids"):
        detect_source(src)
    (src / "metadata.csv").unlink()
    assert detect_source(src).case_map == {}
    # reinhard colour normalisation is for RGB only
    with pytest.raises(SynthpairError, match="channels T1w, T2w"):
        prepare_dataset(src, tmp_path / "d1", PrepareConfig(size=16, folds=2, dedup=False,
                                                           colour_normalisation="reinhard"), progress=False)
    assert not (tmp_path / "d1").exists()
    # more than 4 channels cannot be stored
    five = write_phantom_nnunet(tmp_path / "five", 2, size=16, contrasts=("T1w", "T2w", "PDw", "FLAIR", "T1w"),
                                per_patient=1)
    with pytest.raises(SynthpairError, match="5 channels; synthpair stores 1 to 4"):
        detect_source(five)
    # repeated channel names
    meta = json.loads((src / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1", "1": "t1"}
    (src / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SynthpairError, match="must be distinct"):
        detect_source(src)
