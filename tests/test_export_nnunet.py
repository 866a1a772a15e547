"""``synthpair export nnunet``: the exported folder against nnU-Net v2's documented raw-dataset format
(:func:`synthpair.segmentation.nnunet_format.check_nnunet_raw`, written from the documentation) and, when a
copy of nnU-Net is at hand, against nnU-Net's own ``verify_dataset_integrity``.

nnU-Net is never a dependency (``pip install nnunetv2`` pulls another torch and the CUDA wheels). Its own check is
run from the wheel alone, with small stand-ins for the packages the check imports but does not use for 2-D PNGs::

    pip download nnunetv2==2.8.1 --no-deps -d /tmp/nnunet
    SYNTHPAIR_NNUNETV2=/tmp/nnunet/nnunetv2-2.8.1-py3-none-any.whl pytest tests/test_export_nnunet.py

(``SYNTHPAIR_NNUNETV2`` may also be an unpacked source folder; an importable nnunetv2 is used as it is.)
Otherwise that test is skipped.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_tiny_prepared
from synthpair.cli.main import main
from synthpair.errors import SynthpairError
from synthpair.segmentation.nnunet_export import NnunetExportConfig, export_nnunet
from synthpair.segmentation.nnunet_format import check_nnunet_raw


def _fold_cases(data: Path, k: int) -> tuple[list[str], list[str]]:
    f = json.loads((data / "splits.json").read_text())["folds"][k]
    return f["train"], f["test"]


def make_synthetic(root: Path, data: Path, fold: int = 0, n: int = 5, channels: int = 1, size: int = 16) -> Path:
    """A synthetic folder whose manifest says a generator of ``fold`` made it (train_cases = that fold's training
    cases, so the leakage guard accepts it for that fold only)."""
    syn = write_tiny_prepared(root, n=n, seed=5, channels=channels, size=size)
    train, _ = _fold_cases(data, fold)
    (syn / "manifest.jsonl").write_text("".join(
        json.dumps({"id": f"img{i:03d}", "seed": i, "fold": fold, "train_cases": train}) + "\n" for i in range(n)))
    return syn


def _listing(folder: Path) -> dict[str, list[str]]:
    return {d: sorted(p.name for p in (folder / d).iterdir()) for d in ("imagesTr", "labelsTr")}


# ------------------------------------------------------------------ the export


def test_real_only_export_matches_the_documented_format_and_the_folds(tiny_data: Path, tmp_path: Path) -> None:
    out = export_nnunet(tiny_data, tmp_path / "raw", NnunetExportConfig(dataset_id=7, name="Tiny"))
    assert out == tmp_path / "raw" / "Dataset007_Tiny"
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr", "splits_final.json",
                                                      "synthpair_export.json"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "phantom"} and meta["labels"] == {"background": 0, "class1": 1}
    assert meta["numTraining"] == 12 and meta["file_ending"] == ".png"
    files = _listing(out)
    ids = [f"img{i:03d}" for i in range(12)]
    assert files == {"imagesTr": [f"{i}_0000.png" for i in ids], "labelsTr": [f"{i}.png" for i in ids]}
    # pixels unchanged: the prepared uint8 image and mask, as nnU-Net's natural-image reader sees them
    img = np.asarray(Image.open(out / "imagesTr" / "img003_0000.png"))
    lab = np.asarray(Image.open(out / "labelsTr" / "img003.png"))
    assert img.dtype == np.uint8 and img.shape == (16, 16)
    assert np.array_equal(img, np.asarray(Image.open(tiny_data / "images" / "img003.png")))
    assert lab.dtype == np.uint8 and np.array_equal(lab, np.asarray(Image.open(tiny_data / "masks" / "img003.png")))
    splits = json.loads((out / "splits_final.json").read_text())
    assert len(splits) == 3
    for k, fold in enumerate(splits):
        train, test = _fold_cases(tiny_data, k)  # case id caseNNN ↔ item imgNNN in the fixture
        assert sorted(fold["val"]) == sorted(c.replace("case", "img") for c in test)
        assert sorted(fold["train"]) == sorted(c.replace("case", "img") for c in train)
    summary = check_nnunet_raw(out, require_splits=True)
    assert summary["channels"] == 1 and summary["splits"] == [{"train": 8, "val": 4}] * 3
    prov = json.loads((out / "synthpair_export.json").read_text())
    assert prov["cases"]["img003"] == {"source": "real", "folder": str(tiny_data.resolve()), "id": "img003",
                                       "case": "case003"}


def test_synthetic_pairs_only_in_the_training_lists_of_the_chosen_fold(tiny_data: Path, tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path / "syn", tiny_data, fold=0)
    syn2 = make_synthetic(tmp_path / "syn2", tiny_data, fold=0, n=3)
    rc = main(["export", "nnunet", str(tiny_data), "--out", str(tmp_path / "raw"), "--synthetic", str(syn),
               str(syn2), "--fold", "0", "--dataset-id", "42", "--name", "Tiny"])
    assert rc == 0
    out = tmp_path / "raw" / "Dataset042_Tiny"
    splits = json.loads((out / "splits_final.json").read_text())
    synthetic = {f"syn1_img{i:03d}" for i in range(5)} | {f"syn2_img{i:03d}" for i in range(3)}
    assert synthetic <= set(splits[0]["train"]) and len(splits[0]["train"]) == 8 + 8
    for fold in splits:
        assert not synthetic & set(fold["val"])  # never validation
        assert all(not name.startswith("syn") for name in fold["val"])
    for fold in splits[1:]:
        assert not synthetic & set(fold["train"])  # folds whose test cases the generator saw: real only
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 12 + 8
    assert (out / "imagesTr" / "syn2_img002_0000.png").is_file() and (out / "labelsTr" / "syn2_img002.png").is_file()
    check_nnunet_raw(out, require_splits=True)
    prov = json.loads((out / "synthpair_export.json").read_text())
    assert prov["synthetic_folds"] == [0] and [s["pairs"] for s in prov["synthetic"]] == [5, 3]
    assert prov["folds"][0] == {"fold": 0, "train_real": 8, "train_synthetic": 8, "val": 4, "synthetic": True}
    assert prov["cases"]["syn1_img004"]["source"] == "synthetic"
    assert prov["synthetic"][0]["label_budget"]["0"]["generator_saw_more_labels"] is False


def test_rgb_is_one_png_with_three_channels(tmp_path: Path) -> None:
    data = write_tiny_prepared(tmp_path / "rgb", channels=3, num_classes=3)
    out = export_nnunet(data, tmp_path / "raw", NnunetExportConfig(dataset_id=120, name="Rgb"))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["labels"] == {"background": 0, "class1": 1, "class2": 2}
    assert not list((out / "imagesTr").glob("*_0001.png"))  # nnU-Net: an RGB png is ONE file, three channels
    with Image.open(out / "imagesTr" / "img000_0000.png") as im:
        assert im.mode == "RGB" and im.size == (16, 16)
    values = set()
    for p in (out / "labelsTr").iterdir():
        values |= set(np.unique(np.asarray(Image.open(p))).tolist())
    assert values == {0, 1, 2}
    assert check_nnunet_raw(out)["channels"] == 3


def test_label_budget_view_exports_only_its_labelled_items(tiny_data: Path, tmp_path: Path) -> None:
    from synthpair.data.budget import BudgetConfig, make_budget_view

    view = make_budget_view(tiny_data, tmp_path / "view", BudgetConfig(fold=0, n=3, seed=0), progress=False)
    ds = json.loads((view / "dataset.json").read_text())
    labelled = sorted(it["id"] for it in ds["items"] if it.get("labelled", True))
    unlabelled = sorted(it["id"] for it in ds["items"] if not it.get("labelled", True))
    assert len(labelled) == 3 + 4 and len(unlabelled) == 5
    out = export_nnunet(view, tmp_path / "raw", NnunetExportConfig(name="View"))
    files = _listing(out)
    assert files["labelsTr"] == [f"{i}.png" for i in labelled]
    assert files["imagesTr"] == [f"{i}_0000.png" for i in labelled]
    splits = json.loads((out / "splits_final.json").read_text())
    assert len(splits) == 1 and len(splits[0]["train"]) == 3 and len(splits[0]["val"]) == 4
    prov = json.loads((out / "synthpair_export.json").read_text())
    assert prov["unlabelled_skipped"] == 5

    # a synthetic folder whose generator saw all 8 training masks is over the view's 3-label budget
    syn = make_synthetic(tmp_path / "syn", tiny_data, fold=0)
    with pytest.raises(SynthpairError, match="outside this segmenter's 3 labelled training items"):
        export_nnunet(view, tmp_path / "raw2", NnunetExportConfig(name="View"), synthetic=[syn])
    assert not (tmp_path / "raw2").exists()
    out = export_nnunet(view, tmp_path / "raw2", NnunetExportConfig(name="View", allow_label_excess=True),
                        synthetic=[syn])
    prov = json.loads((out / "synthpair_export.json").read_text())
    assert prov["synthetic"][0]["label_budget"]["0"]["generator_saw_more_labels"] is True
    assert prov["config"]["allow_label_excess"] is True


def test_round_trip_through_synthpair_prepare_with_the_exported_splits(tiny_data: Path, tmp_path: Path) -> None:
    """The export is an nnU-Net raw folder synthpair itself can read back, with its splits_final.json."""
    out = export_nnunet(tiny_data, tmp_path / "raw", NnunetExportConfig(name="Tiny"))
    assert main(["prepare", str(out), "--out", str(tmp_path / "back"), "--size", "16", "--no-dedup",
                 "--splits", str(out / "splits_final.json")]) == 0
    back = json.loads((tmp_path / "back" / "splits.json").read_text())
    splits = json.loads((out / "splits_final.json").read_text())
    assert [sorted(f["test"]) for f in back["folds"]] == [sorted(f["val"]) for f in splits]


# ------------------------------------------------------------------ refusals (one line, exit 2, nothing written)


def _refused(argv: list[str], capsys: pytest.CaptureFixture, match: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthpair: error: ") and "\n" not in err and match in err, err
    return err


def test_refusals_write_nothing(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "raw"
    base = ["export", "nnunet", str(tiny_data), "--out", str(raw)]
    syn = make_synthetic(tmp_path / "syn", tiny_data, fold=0)
    err = _refused([*base, "--synthetic", str(syn)], capsys, "--fold 0")
    assert "fold(s) 1, 2" in err and str(syn) in err
    _refused([*base, "--synthetic", str(syn), "--fold", "1"], capsys, "evaluation split of fold 1")
    _refused([*base, "--synthetic", str(syn), str(syn), "--fold", "0"], capsys, "given twice")
    _refused([*base, "--fold", "5"], capsys, "--fold 5")
    _refused([*base, "--dataset-id", "1000"], capsys, "1..999")
    _refused([*base, "--name", "a b"], capsys, "--name 'a b'")
    small = make_synthetic(tmp_path / "small", tiny_data, fold=0, size=8)
    _refused([*base, "--synthetic", str(small), "--fold", "0"], capsys, "size 8×8")
    nomani = write_tiny_prepared(tmp_path / "nomani", n=3, seed=3)
    _refused([*base, "--synthetic", str(nomani), "--fold", "0"], capsys, "manifest.jsonl")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    Image.fromarray(np.full((16, 16), 3, np.uint8)).save(bad / "masks" / "img005.png")
    _refused(["export", "nnunet", str(bad), "--out", str(raw)], capsys, str(bad / "masks" / "img005.png"))
    assert not raw.exists()  # none of the refusals above wrote anything
    export_nnunet(tiny_data, raw, NnunetExportConfig(dataset_id=501, name="Other"))
    _refused([*base, "--name", "Tiny"], capsys, "id 501 is taken")
    _refused([*base, "--name", "Other"], capsys, "already exists")
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_Other"]
    assert main([*base, "--name", "Other", "--overwrite"]) == 0


# ------------------------------------------------------------------ the format check catches what nnU-Net would


@pytest.fixture
def exported(tiny_data: Path, tmp_path: Path) -> Path:
    return export_nnunet(tiny_data, tmp_path / "raw", NnunetExportConfig(name="Tiny", folds=(0,)),
                         synthetic=[make_synthetic(tmp_path / "syn", tiny_data)])


def _edit_json(path: Path, fn) -> None:
    """Apply ``fn`` (which changes the object in place) to a JSON file."""
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("breakage, match", [
    (lambda d: (d / "labelsTr" / "img004.png").unlink(), "image without label"),
    (lambda d: (d / "imagesTr" / "img004_0000.png").unlink(), "label without image"),
    (lambda d: Image.fromarray(np.full((16, 16), 2, np.uint8)).save(d / "labelsTr" / "img004.png"),
     "label value(s) [2]"),
    (lambda d: Image.fromarray(np.zeros((8, 16), np.uint8)).save(d / "labelsTr" / "img004.png"), "label size"),
    (lambda d: Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "imagesTr" / "img004_0000.png"),
     "3 channel(s)"),
    (lambda d: shutil.copy(d / "imagesTr" / "img004_0000.png", d / "imagesTr" / "img004_0001.png"),
     "every case needs the same channels"),
    (lambda d: shutil.copy(d / "imagesTr" / "img004_0000.png", d / "imagesTr" / "img004.png"),
     "not an nnU-Net image name"),
    (lambda d: _edit_json(d / "dataset.json", lambda m: m.update(numTraining=3)), "numTraining is 3"),
    (lambda d: _edit_json(d / "dataset.json", lambda m: m.update(labels={"background": 0, "a": 2})),
     "not consecutive"),
    (lambda d: _edit_json(d / "dataset.json", lambda m: m.pop("file_ending")), "missing file_ending"),
    (lambda d: _edit_json(d / "splits_final.json", lambda s: s[0]["train"].append("nope")), "not in imagesTr"),
    (lambda d: _edit_json(d / "splits_final.json", lambda s: s[1]["val"].append(s[1]["train"][0])),
     "in both train and val"),
    (lambda d: (d / "splits_final.json").write_text('{"train": []}'), "non-empty list"),
])
def test_format_check_catches_broken_folders(exported: Path, breakage, match: str) -> None:
    check_nnunet_raw(exported, require_splits=True)
    breakage(exported)
    with pytest.raises(SynthpairError, match=match.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        check_nnunet_raw(exported, require_splits=True)


def test_format_check_wants_the_dataset_folder_name(exported: Path) -> None:
    moved = exported.rename(exported.parent / "Tiny")
    with pytest.raises(SynthpairError, match="DatasetXXX_Name"):
        check_nnunet_raw(moved)


# ------------------------------------------------------------------ nnU-Net's own integrity check

_STUBS = {
    # verify_dataset_integrity uses only pd.unique from pandas
    "pandas.py": "import numpy as np\n\ndef unique(values):\n    return np.unique(values)\n",
    "batchgenerators/__init__.py": "",
    "batchgenerators/utilities/__init__.py": "",
    # the helpers of batchgenerators' file_and_folder_operations that the check imports (star import: List too)
    "batchgenerators/utilities/file_and_folder_operations.py": textwrap.dedent("""\
        import json, os
        from os.path import join, isfile, isdir
        from typing import List

        def subfiles(folder, join=True, prefix=None, suffix=None, sort=True):
            res = [os.path.join(folder, f) if join else f for f in os.listdir(folder)
                   if os.path.isfile(os.path.join(folder, f)) and (prefix is None or f.startswith(prefix))
                   and (suffix is None or f.endswith(suffix))]
            return sorted(res) if sort else res

        def subdirs(folder, join=True, prefix=None, suffix=None, sort=True):
            res = [os.path.join(folder, f) if join else f for f in os.listdir(folder)
                   if os.path.isdir(os.path.join(folder, f)) and (prefix is None or f.startswith(prefix))
                   and (suffix is None or f.endswith(suffix))]
            return sorted(res) if sort else res

        def load_json(file):
            with open(file) as fh:
                return json.load(fh)

        def save_json(obj, file, indent=4, sort_keys=True):
            with open(file, "w") as fh:
                json.dump(obj, fh, sort_keys=sort_keys, indent=indent)

        def maybe_mkdir_p(directory):
            os.makedirs(directory, exist_ok=True)
        """),
    # imported at module level by label_handling / the SimpleITK reader, never called for 2-D PNGs
    "acvl_utils/__init__.py": "",
    "acvl_utils/cropping_and_padding/__init__.py": "",
    "acvl_utils/cropping_and_padding/bounding_boxes.py":
        "def insert_crop_into_image(*args, **kwargs):\n    raise NotImplementedError('stub')\n",
    "SimpleITK.py": "",
}


def _nnunet_pythonpath(tmp: Path) -> str | None:
    """PYTHONPATH under which ``nnunetv2.experiment_planning.verify_dataset_integrity`` imports with our torch, or
    None (test skipped). An installed nnunetv2 is used as it is; else the wheel/folder in $SYNTHPAIR_NNUNETV2 plus
    the stubs above for the missing packages (only those that are missing: real ones win)."""
    import importlib.util

    if importlib.util.find_spec("nnunetv2") is not None:
        return os.pathsep.join(sys.path)
    src = os.environ.get("SYNTHPAIR_NNUNETV2")
    if not src or not Path(src).exists():
        return None
    stubs = tmp / "stubs"
    for rel, text in _STUBS.items():
        top = rel.split("/")[0].removesuffix(".py")
        if importlib.util.find_spec(top) is None:
            (stubs / rel).parent.mkdir(parents=True, exist_ok=True)
            (stubs / rel).write_text(text)
    return os.pathsep.join([str(stubs), str(Path(src).resolve())])


def _run_nnunet_check(folder: Path, pythonpath: str) -> subprocess.CompletedProcess:
    code = ("from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
            f"verify_dataset_integrity({str(folder)!r}, 1)\n")
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_nnunet_own_integrity_check(tiny_data: Path, tmp_path: Path) -> None:
    path = _nnunet_pythonpath(tmp_path)
    if path is None:
        pytest.skip("nnU-Net not available: pip download nnunetv2 --no-deps -d DIR and set SYNTHPAIR_NNUNETV2 to "
                    "the wheel (see this file's docstring)")
    gray = export_nnunet(tiny_data, tmp_path / "raw", NnunetExportConfig(dataset_id=1, name="Gray", folds=(0,)),
                         synthetic=[make_synthetic(tmp_path / "syn", tiny_data)])
    rgb_data = write_tiny_prepared(tmp_path / "rgb", channels=3, num_classes=3)
    rgb = export_nnunet(rgb_data, tmp_path / "raw", NnunetExportConfig(dataset_id=2, name="Rgb", folds=(0,)),
                        synthetic=[make_synthetic(tmp_path / "syn_rgb", rgb_data, channels=3)])
    for folder in (gray, rgb):
        proc = _run_nnunet_check(folder, path)
        assert proc.returncode == 0 and "verify_dataset_integrity Done" in proc.stdout, proc.stdout + proc.stderr
        assert "Error" not in proc.stdout, proc.stdout
    # and the check is not a no-op here: a label outside dataset.json's labels fails it
    Image.fromarray(np.full((16, 16), 5, np.uint8)).save(gray / "labelsTr" / "img004.png")
    proc = _run_nnunet_check(gray, path)
    assert proc.returncode != 0 and "unexpected labels" in proc.stdout + proc.stderr
