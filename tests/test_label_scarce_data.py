"""Few labels, many images (issue 10), data side: unlabelled items in ``prepare`` (de-duplication together with
the labelled images, never on a test side), fixed splits from a file (label-scarce layout and nnU-Net's
``splits_final.json``) with every refusal, and nested label-budget views (``synthpair budget``)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_tiny_prepared
from data_helpers import textured, write_nnunet_folder, write_png_folder
from synthpair.cli.main import main
from synthpair.data.budget import BudgetConfig, make_budget_view, nested_subset
from synthpair.data.dataset import PreparedDataset
from synthpair.data.prepare import PrepareConfig, prepare_dataset
from synthpair.data.readers import list_unlabelled
from synthpair.data.split_file import fingerprint, read_split_file
from synthpair.errors import SynthpairError
from synthpair.segmentation.train import training_items


def _cfg(**kw):
    return PrepareConfig(**{"size": 16, "folds": 3, **kw})


def _write_unlabelled(folder: Path, n: int, seed: int = 100, start: int = 0, h: int = 40, w: int = 48,
                      rgb: bool = False) -> Path:
    """``folder/u_XX.png``: distinct textured images without masks."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        img = textured(rng, h, w)
        if rgb:
            img = np.stack([img, np.roll(img, 5, axis=1), 255 - img], axis=-1)
        Image.fromarray(img).save(folder / f"u_{i:02d}.png")
    return folder


def _noisy_copy(src: Path, dst: Path, seed: int = 1) -> None:
    a = np.asarray(Image.open(src)).astype(np.int16)
    noisy = np.clip(a + np.random.default_rng(seed).integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(dst)


def _no_output(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


def _refused(fn, out: Path, *needles: str) -> str:
    with pytest.raises(SynthpairError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    _no_output(out.parent, out)
    return msg


# ------------------------------------------------------------------------------------------ unlabelled items
def test_prepare_with_unlabelled_folder(tmp_path):
    src = write_png_folder(tmp_path / "s", n=6)
    unl = _write_unlabelled(tmp_path / "unl", 4)
    out = prepare_dataset(src, tmp_path / "d", _cfg(unlabelled=str(unl)), progress=False)
    ds = PreparedDataset.open(out)
    assert ds.unlabelled_ids == ["u_00", "u_01", "u_02", "u_03"]
    assert ds.labelled_ids == [f"img_{i:02d}" for i in range(6)]
    assert not ds.is_labelled("u_00") and ds.is_labelled("img_00")
    assert sorted(p.stem for p in (out / "masks").iterdir()) == ds.labelled_ids  # no mask file for unlabelled
    assert sorted(p.stem for p in (out / "images").iterdir()) == sorted(ds.ids)
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"] == {"items": 10, "labelled": 6, "unlabelled": 4, "left_out_by_split_file": 0,
                              "dropped_unlabelled_duplicates": 0}
    assert info["unlabelled_source"] == str(unl.resolve())
    item = next(it for it in info["items"] if it["id"] == "u_02")
    assert item["labelled"] is False and item["foreground_fraction"] is None and item["source_mask"] is None
    assert item["source_image"] == str((unl / "u_02.png").resolve())
    splits = json.loads((out / "splits.json").read_text())
    assert splits["unlabelled_cases"] == ["u_00", "u_01", "u_02", "u_03"]
    # the K folds are made of labelled cases only; unlabelled images are on the training side of every fold
    for k in range(3):
        tr, te = ds.split(k)
        assert set(tr) | set(te) == set(ds.labelled_ids) and not set(tr) & set(te)
        assert not set(ds.unlabelled_ids) & (set(tr) | set(te))
        assert not {ds.case_of(i) for i in ds.unlabelled_ids} & set(splits["folds"][k]["test"])
        assert ds.image_train_ids(k) == [i for i in ds.ids if i in set(tr) | set(ds.unlabelled_ids)]
        assert ds.image_train_ids(k, unlabelled=False) == tr
    # images are read and normalised like the labelled ones
    x = ds.load_images(ds.unlabelled_ids)
    assert x.shape == (4, 1, 16, 16) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.1


def test_src_unlabelled_subfolder_used_automatically(tmp_path):
    src = write_png_folder(tmp_path / "s", n=6)
    _write_unlabelled(src / "unlabelled" / "images", 2)  # DIR/images/* is read too
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "d", _cfg(), progress=False))
    assert ds.unlabelled_ids == ["u_00", "u_01"]
    assert ds.info["prepare_config"]["unlabelled"] == ""


def test_load_refuses_unlabelled_items(tmp_path):
    src = write_png_folder(tmp_path / "s", n=6)
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "d", _cfg(unlabelled=str(
        _write_unlabelled(tmp_path / "unl", 2))), progress=False))
    with pytest.raises(SynthpairError) as exc:
        ds.load(["img_00", "u_01", "u_00"])
    msg = str(exc.value)
    assert "\n" not in msg and "'u_01'" in msg and "2 such item(s)" in msg and "unlabelled" in msg
    x, m = ds.load(["img_00"])
    assert x.shape == (1, 1, 16, 16) and m.shape == (1, 16, 16)


def test_unlabelled_twins_dropped_and_unlabelled_duplicates_merged(tmp_path):
    src = write_png_folder(tmp_path / "s", n=6)
    unl = _write_unlabelled(tmp_path / "unl", 3)
    # an unlabelled copy of every labelled image (each one is a test image in some fold) ...
    for i in range(6):
        _noisy_copy(src / "images" / f"img_{i:02d}.png", unl / f"twin_{i:02d}.png", seed=i)
    # ... and an unlabelled-only near-duplicate pair
    _noisy_copy(unl / "u_01.png", unl / "u_09.png", seed=42)
    out = prepare_dataset(src, tmp_path / "d", _cfg(unlabelled=str(unl)), progress=False)
    ds = PreparedDataset.open(out)
    dup = json.loads((out / "duplicates.json").read_text())
    assert sorted(d["id"] for d in dup["dropped_unlabelled"]) == [f"twin_{i:02d}" for i in range(6)]
    assert {d["id"]: d["twin_of"] for d in dup["dropped_unlabelled"]} == {f"twin_{i:02d}": f"img_{i:02d}"
                                                                          for i in range(6)}
    assert sorted(map(sorted, dup["groups"])) == sorted(
        [["u_01", "u_09"]] + [[f"img_{i:02d}", f"twin_{i:02d}"] for i in range(6)])
    # dropped twins are gone from every file of the folder
    assert not [i for i in ds.ids if i.startswith("twin_")]
    assert not list((out / "images").glob("twin_*"))
    assert ds.info["counts"]["dropped_unlabelled_duplicates"] == 6 and ds.info["counts"]["unlabelled"] == 4
    # the unlabelled-only duplicates share one case, on the training side of every fold
    assert ds.case_of("u_09") == ds.case_of("u_01") == "u_01"
    assert json.loads((out / "splits.json").read_text())["unlabelled_cases"] == ["u_00", "u_01", "u_02"]
    for k in range(3):
        _, te = ds.split(k)
        assert not {"u_00", "u_01", "u_02", "u_09"} & set(te)
        assert {"u_00", "u_01", "u_02", "u_09"} <= set(ds.image_train_ids(k))
    # the labelled items are untouched by the drop: one case each, 6 labelled items
    assert ds.labelled_ids == [f"img_{i:02d}" for i in range(6)] and len({ds.case_of(i) for i in ds.labelled_ids}) == 6


def test_dropped_twins_reported_on_stderr(tmp_path, capsys):
    src = write_png_folder(tmp_path / "s", n=6)
    unl = _write_unlabelled(tmp_path / "unl", 2)
    _noisy_copy(src / "images" / "img_03.png", unl / "copy.png")
    prepare_dataset(src, tmp_path / "d", _cfg(unlabelled=str(unl)), progress=True)
    err = capsys.readouterr().err
    assert "dropped 1 unlabelled image(s)" in err and "copy ~ img_03" in err and "6 labelled, 2 unlabelled" in err


def test_open_refuses_unlabelled_item_in_a_test_split(tmp_path):
    data = write_tiny_prepared(tmp_path / "d", n=6, folds=2)
    info = json.loads((data / "dataset.json").read_text())
    info["items"][0]["labelled"] = False  # img000 / case000 is in the test split of fold 0
    (data / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(SynthpairError) as exc:
        PreparedDataset.open(data)
    msg = str(exc.value)
    assert "\n" not in msg and "splits.json" in msg and "'img000'" in msg and "fold 0" in msg


def test_nnunet_imagesTs_is_not_unlabelled(tmp_path):
    src = write_nnunet_folder(tmp_path / "nn", n_cases=3)
    (src / "imagesTs").mkdir()
    (src / "imagesTs" / "test000_0000.nii.gz").write_bytes((src / "imagesTr" / "pat000_0000.nii.gz").read_bytes())
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "d", _cfg(size=8), progress=False))
    assert ds.unlabelled_ids == [] and not [i for i in ds.ids if i.startswith("test000")]
    assert "unlabelled_cases" not in json.loads((tmp_path / "d" / "splits.json").read_text())


def test_unlabelled_bad_input(tmp_path):
    src = write_png_folder(tmp_path / "s", n=6)
    out = tmp_path / "out"

    def run(unl, **kw):
        return lambda: prepare_dataset(src, out, _cfg(unlabelled=str(unl), **kw), progress=False)

    unl = _write_unlabelled(tmp_path / "u1", 2)
    (unl / "masks").mkdir()
    _refused(run(unl), out, str(unl / "masks"), "holds masks")
    unl = _write_unlabelled(tmp_path / "u2", 2)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(unl / "u_00_mask.png")
    _refused(run(unl), out, "u_00_mask.png", "looks like a mask")
    unl = _write_unlabelled(tmp_path / "u3", 2)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(unl / "u_01_seg.png")
    _refused(run(unl), out, "u_01_seg.png")
    _refused(run(tmp_path / "missing"), out, "missing", "not found")
    (tmp_path / "empty").mkdir()
    _refused(run(tmp_path / "empty"), out, "empty", "no images found")
    rgb = _write_unlabelled(tmp_path / "rgb", 2, rgb=True)
    _refused(run(rgb), out, "u_00.png", "3 channel(s)", "labelled images have 1")
    clash = _write_unlabelled(tmp_path / "clash", 1)
    (clash / "u_00.png").rename(clash / "img_02.png")
    _refused(run(clash), out, "'img_02'", "rename one")
    assert list_unlabelled(_write_unlabelled(tmp_path / "ok", 2)) == [
        ("u_00", tmp_path / "ok" / "u_00.png"), ("u_01", tmp_path / "ok" / "u_01.png")]


# ------------------------------------------------------------------------------------------------ split files
TEST = ["img_00", "img_01", "img_02"]
POOL = ["img_03", "img_04", "img_05", "img_06", "img_07", "img_08"]
SUBSETS = {"seed0_N2": ["img_03", "img_04"], "seed0_N4": ["img_03", "img_04", "img_05", "img_06"],
           "seed1_N2": ["img_07", "img_08"]}


def _sha12(names) -> str:
    return hashlib.sha1(",".join(sorted(names)).encode()).hexdigest()[:12]


def _split_src(tmp_path: Path, n: int = 10) -> Path:
    return write_png_folder(tmp_path / "busi_src", n=n)


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_fingerprint_definition():
    assert fingerprint(["b", "a", "c"]) == _sha12(["a", "b", "c"]) == hashlib.sha1(b"a,b,c").hexdigest()[:12]
    assert fingerprint(["a", "b"]) != fingerprint(["a", "c"])


def test_split_file_round_trip_test_pool_layout(tmp_path):
    src = _split_src(tmp_path)
    unl = _write_unlabelled(tmp_path / "unl", 2)
    sf = _write(tmp_path / "split.json", {"test": TEST, "pool": POOL, "train_subsets": SUBSETS,
                                          "sha1_test": _sha12(TEST)})
    out = prepare_dataset(src, tmp_path / "d", _cfg(splits_file=str(sf), unlabelled=str(unl)), progress=False)
    ds = PreparedDataset.open(out)
    splits = json.loads((out / "splits.json").read_text())
    assert splits["by"] == "file" and splits["num_folds"] == 1
    assert splits["folds"] == [{"fold": 0, "train": POOL, "test": TEST}]
    assert splits["source"] == {"file": str(sf.resolve()), "key": None, "kind": "test-pool",
                                "fingerprint": _sha12(TEST)}
    assert splits["subsets"] == SUBSETS and ds.subsets == SUBSETS
    assert splits["unlabelled_cases"] == ["u_00", "u_01"]
    assert ds.split(0) == (POOL, TEST)
    # img_09 is in neither list: left out; the unlabelled images stay (training side)
    assert "img_09" not in ds.ids and ds.unlabelled_ids == ["u_00", "u_01"]
    assert ds.info["counts"]["left_out_by_split_file"] == 1
    assert ds.image_train_ids(0) == POOL + ["u_00", "u_01"]


def test_split_file_nested_under_dataset_keys(tmp_path):
    src = _split_src(tmp_path)
    other = {"test": ["x1"], "pool": ["x2"]}
    sf = _write(tmp_path / "label-scarce.json", {"about": "two datasets", "busi": {"test": TEST, "pool": POOL},
                                                 "kvasir": other})
    # the dataset whose name the source folder name starts with ("busi_src" → busi)
    out = prepare_dataset(src, tmp_path / "d1", _cfg(splits_file=str(sf)), progress=False)
    assert json.loads((out / "splits.json").read_text())["source"]["key"] == "busi"
    # an explicit key, and the name given in the config
    out = prepare_dataset(src, tmp_path / "d2", _cfg(splits_file=str(sf), splits_key="busi"), progress=False)
    assert PreparedDataset.open(out).split(0) == (POOL, TEST)
    spec = read_split_file(sf, None, "kvasir-seg")
    assert spec.key == "kvasir" and spec.folds == [(["x2"], ["x1"])] and spec.fingerprint == _sha12(["x1"])


def test_split_file_case_names_take_whole_cases(tmp_path):
    src = _split_src(tmp_path)
    (src / "metadata.csv").write_text("stem,case\n" + "".join(
        f"img_{i:02d},pat{i // 2}\n" for i in range(10)))
    sf = _write(tmp_path / "s.json", {"test": ["pat0"], "pool": ["pat1", "img_04", "img_05"]})
    ds = PreparedDataset.open(prepare_dataset(src, tmp_path / "d", _cfg(splits_file=str(sf)), progress=False))
    assert ds.split(0) == (["img_02", "img_03", "img_04", "img_05"], ["img_00", "img_01"])


def test_split_file_round_trip_nnunet_layout(tmp_path):
    src = _split_src(tmp_path, n=6)
    folds = [{"train": ["img_02", "img_03", "img_04", "img_05"], "val": ["img_00", "img_01"]},
             {"train": ["img_00", "img_01", "img_04", "img_05"], "val": ["img_02", "img_03"]},
             {"train": ["img_00", "img_01", "img_02", "img_03"], "val": ["img_04", "img_05"]}]
    sf = _write(tmp_path / "splits_final.json", folds)
    out = prepare_dataset(src, tmp_path / "d", _cfg(splits_file=str(sf)), progress=False)
    ds = PreparedDataset.open(out)
    splits = json.loads((out / "splits.json").read_text())
    assert splits["by"] == "file" and splits["num_folds"] == 3 and splits["subsets"] == {}
    assert splits["source"] == {"file": str(sf.resolve()), "key": None, "kind": "nnunet",
                                "fingerprint": _sha12(["img_00", "img_01"])}
    for k, f in enumerate(folds):
        assert splits["folds"][k] == {"fold": k, "train": f["train"], "test": f["val"]}
        assert ds.split(k) == (f["train"], f["val"])


BAD_SPLITS = {
    "duplicate": ({"test": TEST + ["img_00"], "pool": POOL}, None, ["'img_00'", "listed twice"]),
    "overlap": ({"test": TEST, "pool": POOL + ["img_01"]}, None, ["in both test and pool", "'img_01'"]),
    "outside pool": ({"test": TEST, "pool": POOL, "train_subsets": {"seed0_N2": ["img_03", "img_00"]}}, None,
                     ["train_subsets.seed0_N2", "outside the pool", "'img_00'"]),
    "not nested": ({"test": TEST, "pool": POOL, "train_subsets": {"seed0_N2": ["img_03", "img_07"],
                                                                   "seed0_N4": POOL[:4]}}, None,
                   ["seed0_N2 is not inside seed0_N4", "'img_07'"]),
    "sha1": ({"test": TEST, "pool": POOL, "sha1_test": "0123456789ab"}, None,
             ["sha1_test 0123456789ab", _sha12(TEST)]),
    "ambiguous key": ({"kvasir": {"test": TEST, "pool": POOL}, "polyp": {"test": TEST, "pool": POOL}}, None,
                      ["kvasir, polyp", "--splits-key"]),
    "unknown key": ({"busi": {"test": TEST, "pool": POOL}}, "kvasir", ["no dataset 'kvasir'", "busi"]),
    "key for one split": ({"test": TEST, "pool": POOL}, "busi", ["--splits-key 'busi'", "drop --splits-key"]),
    "no pool": ({"test": TEST}, None, ["no 'pool' list"]),
    "no test": ({"pool": POOL}, None, ["no 'test' list"]),
    "unknown stems": ({"test": TEST, "pool": POOL + ["img_77", "img_78"]}, None,
                      ["2 stem(s) do not exist", "'img_77'"]),
    "unknown subset stem": ({"test": TEST, "pool": POOL + ["nope"], "train_subsets": {"a": ["nope"]}}, None,
                            ["do not exist", "'nope'"]),
    "nnunet train/val overlap": ([{"train": ["img_00", "img_01"], "val": ["img_01"]}], None,
                                 ["'img_01' is in both train and val of fold 0"]),
    "nnunet key": ([{"train": ["img_00"], "val": ["img_01"]}], "busi", ["nnU-Net fold list", "--splits-key"]),
    "nnunet bad fold": ([{"train": ["img_00"]}], None, ["fold 0", "'train' and 'val'"]),
    "nnunet unknown stem": ([{"train": ["img_00"], "val": ["case_x"]}], None, ["fold 0 test", "'case_x'"]),
}


@pytest.mark.parametrize("case", list(BAD_SPLITS))
def test_split_file_refusals(tmp_path, case):
    obj, key, needles = BAD_SPLITS[case]
    src = _split_src(tmp_path)
    sf = _write(tmp_path / "bad-split.json", obj)
    out = tmp_path / "out"
    cfg = _cfg(splits_file=str(sf), **({"splits_key": key} if key else {}))
    _refused(lambda: prepare_dataset(src, out, cfg, progress=False), out, "bad-split.json", *needles)


def test_split_file_refusal_through_cli(tmp_path, capsys):
    src = _split_src(tmp_path)
    sf = _write(tmp_path / "split.json", {"test": TEST, "pool": POOL + ["img_01"]})
    out = tmp_path / "out"
    assert main(["prepare", str(src), "--out", str(out), "--size", "16", "--splits", str(sf)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("synthpair: error:") and "split.json" in err
    _no_output(tmp_path, out)
    sf2 = _write(tmp_path / "two.json", {"busi": {"test": TEST, "pool": POOL}, "kvasir": {"test": TEST, "pool": POOL}})
    assert main(["prepare", str(src), "--out", str(out), "--size", "16", "--splits", str(sf2),
                 "--splits-key", "kvasir"]) == 0
    assert json.loads((out / "splits.json").read_text())["source"]["key"] == "kvasir"


def test_split_file_keeps_cross_split_duplicates_and_warns(tmp_path, capsys):
    src = _split_src(tmp_path)
    _noisy_copy(src / "images" / "img_00.png", src / "images" / "img_05.png")  # a test image's twin in the pool
    sf = _write(tmp_path / "s.json", {"test": TEST, "pool": POOL})
    out = prepare_dataset(src, tmp_path / "d", _cfg(splits_file=str(sf)), progress=True)
    assert "span the split file's test and pool" in capsys.readouterr().err
    ds = PreparedDataset.open(out)
    assert ds.split(0) == (POOL, TEST)  # the file's split is kept as given ...
    assert json.loads((out / "duplicates.json").read_text())["cross_split_groups"] == [["img_00", "img_05"]]
    assert ds.case_of("img_05") != ds.case_of("img_00")  # ... and the two are not merged into one case


# ---------------------------------------------------------------------------------------------- label budgets
@pytest.fixture
def budget_data(tmp_path):
    """15 labelled items, 3 folds (10 training items in fold 0) plus two unlabelled items."""
    data = write_tiny_prepared(tmp_path / "data", n=15, folds=3)
    info = json.loads((data / "dataset.json").read_text())
    rng = np.random.default_rng(5)
    from synthpair.data.dataset import write_pair

    for k in range(2):
        write_pair(data, f"unl{k}", rng.uniform(-1, 1, (1, 16, 16)), None)
        info["items"].append({"id": f"unl{k}", "case": f"ucase{k}", "labelled": False, "spacing": None,
                              "slice_index": None, "foreground_fraction": None})
    (data / "dataset.json").write_text(json.dumps(info))
    return data


def test_budget_views_nested_and_hidden_masks(budget_data, tmp_path):
    data = PreparedDataset.open(budget_data)
    train0, test0 = data.split(0)
    assert len(train0) == 10
    v4, v8 = tmp_path / "v4", tmp_path / "v8"
    assert main(["budget", str(budget_data), "--out", str(v4), "--n", "4", "--seed", "3"]) == 0
    assert main(["budget", str(budget_data), "--out", str(v8), "--n", "8", "--seed", "3"]) == 0
    d4, d8 = PreparedDataset.open(v4), PreparedDataset.open(v8)
    lab4, lab8 = d4.split(0)[0], d8.split(0)[0]
    assert len(lab4) == 4 and len(lab8) == 8 and set(lab4) < set(lab8) < set(train0)
    assert lab4 == nested_subset(data, 0, 4, 3) == training_items(data, 0, 4, 3)
    assert d4.info["label_budget"]["labelled_items"] == lab4 and d4.info["label_budget"]["n"] == 4
    assert d4.info["label_budget"]["parent"] == str(budget_data.resolve())
    assert d4.info["label_budget"]["hidden_masks"] == 6
    for view, lab in ((d4, lab4), (d8, lab8)):
        assert view.num_folds == 1 and view.split(0)[1] == test0  # same test items, with masks
        hidden = [i for i in train0 if i not in lab]
        assert sorted(view.unlabelled_ids) == sorted(hidden + ["unl0", "unl1"])
        for i in view.unlabelled_ids:
            assert not (view.root / "masks" / f"{i}.png").exists()
            assert (view.root / "images" / f"{i}.png").is_file()
        assert sorted(p.stem for p in (view.root / "masks").iterdir()) == sorted(lab + test0)
        with pytest.raises(SynthpairError, match=f"'{hidden[0]}' is unlabelled"):
            view.load([lab[0], hidden[0]])
        view.load(lab + test0)  # the labelled training and test items load with their masks
        np.testing.assert_array_equal(view.load_images(hidden), data.load_images(hidden))
        assert set(view.image_train_ids(0)) == set(train0) | {"unl0", "unl1"}
        splits = json.loads((view.root / "splits.json").read_text())
        assert splits["by"] == "label-budget" and splits["folds"][0]["source_fold"] == 0
        assert not set(splits["unlabelled_cases"]) & set(splits["folds"][0]["test"])
        assert view.info["counts"]["labelled_training"] == len(lab)
    # another seed: another subset of the same size
    assert nested_subset(data, 0, 4, 4) != lab4 or nested_subset(data, 0, 4, 5) != lab4


def test_budget_other_fold(budget_data, tmp_path):
    view = make_budget_view(budget_data, tmp_path / "v", BudgetConfig(fold=2, n=3, seed=0), progress=False)
    data = PreparedDataset.open(budget_data)
    d = PreparedDataset.open(view)
    assert d.split(0) == (nested_subset(data, 2, 3, 0), data.split(2)[1])
    assert json.loads((view / "splits.json").read_text())["folds"][0]["source_fold"] == 2


def test_budget_subset_from_split_file(tmp_path):
    src = _split_src(tmp_path)
    sf = _write(tmp_path / "split.json", {"test": TEST, "pool": POOL, "train_subsets": SUBSETS})
    data = prepare_dataset(src, tmp_path / "d", _cfg(splits_file=str(sf)), progress=False)
    view = tmp_path / "view"
    assert main(["budget", str(data), "--out", str(view), "--subset", "seed0_N4"]) == 0
    d = PreparedDataset.open(view)
    assert d.split(0) == (SUBSETS["seed0_N4"], TEST)
    assert sorted(d.unlabelled_ids) == ["img_07", "img_08"]
    # the fingerprint of the split file and the subsets inside the budget travel with the view
    splits = json.loads((view / "splits.json").read_text())
    assert splits["source"]["fingerprint"] == _sha12(TEST)
    assert splits["subsets"] == {"seed0_N2": SUBSETS["seed0_N2"], "seed0_N4": SUBSETS["seed0_N4"]}
    assert d.info["label_budget"]["subset"] == "seed0_N4"


@pytest.mark.parametrize("args,needles", [
    (["--n", "11"], ["n=11", "only 10 labelled training items"]),
    (["--n", "4", "--subset", "seed0_N2"], ["either --n", "not both/neither"]),
    ([], ["either --n", "not both/neither"]),
    (["--n", "-2"], ["--n -2"]),
    (["--subset", "seed9_N16"], ["--subset 'seed9_N16'", "no named subsets"]),
    (["--n", "2", "--fold", "7"], ["--fold 7", "folds 0..2"]),
])
def test_budget_bad_input(budget_data, tmp_path, capsys, args, needles):
    out = tmp_path / "view"
    assert main(["budget", str(budget_data), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("synthpair: error:"), err
    for n in needles:
        assert n in err, err
    _no_output(tmp_path, out)


def test_budget_unknown_subset_lists_known_ones(tmp_path):
    src = _split_src(tmp_path)
    sf = _write(tmp_path / "split.json", {"test": TEST, "pool": POOL, "train_subsets": SUBSETS})
    data = prepare_dataset(src, tmp_path / "d", _cfg(splits_file=str(sf)), progress=False)
    out = tmp_path / "v"
    msg = _refused(lambda: make_budget_view(data, out, BudgetConfig(subset="seed0_N16"), progress=False), out,
                   "'seed0_N16'", "seed0_N2", "seed0_N4")
    assert "--n N" in msg


def test_budget_refuses_existing_output(budget_data, tmp_path):
    out = tmp_path / "v"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SynthpairError, match="already exists"):
        make_budget_view(budget_data, out, BudgetConfig(n=2), progress=False)
    assert (out / "keep.txt").read_text() == "x"


# ------------------------------------------------------------------------------- colour statistics, training side
def test_reinhard_statistics_come_from_the_training_side_only(tmp_path):
    """The Reinhard target is the mean L*a*b* statistics of the pool (+ unlabelled) items: recolouring the TEST
    images leaves the target, and every training image, exactly as they were; the items used are recorded."""
    from synthpair.data.colour import lab_stats

    def read_png(p: Path) -> np.ndarray:
        return np.asarray(Image.open(p))

    def prepared(src: Path, name: str) -> Path:
        sf = _write(tmp_path / f"{name}.json", {"test": TEST, "pool": POOL})
        return prepare_dataset(src, tmp_path / name, _cfg(splits_file=str(sf), colour_normalisation="reinhard",
                                                           dedup=False), progress=False)

    src = write_png_folder(tmp_path / "rgb_src", n=9, rgb=True)
    recoloured = tmp_path / "rgb_recoloured"
    shutil.copytree(src, recoloured)
    for stem in TEST:  # the test images turn reddish: a target computed over them would move
        p = recoloured / "images" / f"{stem}.png"
        arr = np.asarray(Image.open(p)).astype(np.int32)
        arr[..., 0] = np.clip(arr[..., 0] + 90, 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(p)
    a, b = prepared(src, "a"), prepared(recoloured, "b")
    ca = json.loads((a / "dataset.json").read_text())["normalisation"]["colour"]
    cb = json.loads((b / "dataset.json").read_text())["normalisation"]["colour"]
    assert ca["statistics_items"] == POOL and ca["statistics_fold"] == 0
    assert ca["lab_mean"] == cb["lab_mean"] and ca["lab_sd"] == cb["lab_sd"]
    for stem in POOL:
        assert np.array_equal(read_png(a / "images" / f"{stem}.png"), read_png(b / "images" / f"{stem}.png"))
    # the target is the pool's own statistics (of the resized, intensity-normalised images before Reinhard)
    plain = prepare_dataset(src, tmp_path / "plain", _cfg(splits_file=str(_write(tmp_path / "p.json", {
        "test": TEST, "pool": POOL})), dedup=False), progress=False)
    pool_imgs = [read_png(plain / "images" / f"{s}.png").astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
                 for s in POOL]
    mean, sd = lab_stats(pool_imgs)
    np.testing.assert_allclose(ca["lab_mean"], mean, atol=0.5)  # uint8 round trip of the plain images
    np.testing.assert_allclose(ca["lab_sd"], sd, atol=0.5)
