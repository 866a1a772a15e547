"""Classifier guidance vs classifier-free guidance: the guidance gradient's sign and size on a toy case (for eps,
x0 and v networks), class labels from item ids, the pipeline end to end, and the refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks_helpers import FIT, NETFIT, mr_data
from synthpair.data.dataset import PreparedDataset
from synthpair.diffusion.cond import Cond
from synthpair.diffusion.schedule import DiffusionConfig, NoiseSchedule
from synthpair.errors import SynthpairError
from synthpair.evaluation.tasks.guidance import GuidanceConfig, classifier_guided, item_classes, run_guidance

pytestmark = pytest.mark.usefixtures("one_thread")


class MeanClassifier(torch.nn.Module):
    """Toy classifier: logits (0, w · mean(x)) — class 1 = bright images; grad of log p(1|x) is positive."""

    def __init__(self, w: float = 4.0) -> None:
        super().__init__()
        self.w = w

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.w * x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(m), m], dim=1)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "edm"])
def test_classifier_guidance_pushes_x0_towards_the_class(prediction):
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=100, prediction=prediction))
    x_t = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 40, 70, 90])
    seen = []

    def net(x, tt, cond=None):          # predicts eps = 0 in its own parameterisation; records the condition
        seen.append(cond)
        return sched.target(x / sched.sqrt_ab[tt].view(-1, 1, 1, 1), tt, torch.zeros_like(x))

    clf = MeanClassifier()
    x0_plain, _ = sched.to_x0_eps(net(x_t, t), x_t, t)
    s = 2.0
    for y, sign in ((1, 1.0), (0, -1.0)):
        out = classifier_guided(net, sched, clf, s)(x_t, t, Cond(label=torch.full((4,), y)))
        assert seen[-1].drop.all()                                    # the network ran on its null condition
        x0_g, eps_g = sched.to_x0_eps(out, x_t, t)
        # toy gradient: d/dx log p(y|x) = ±w (1 - p_y) / (H W) per pixel
        p1 = torch.sigmoid(clf.w * x_t.mean(dim=(1, 2, 3)))
        g = (clf.w * ((1 - p1) if y == 1 else -p1) / 64).view(-1, 1, 1, 1)
        ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        expect = x0_plain + s * (1 - ab) / ab.sqrt() * g            # x0 moves by s (1 - abar)/sqrt(abar) grad
        assert torch.allclose(x0_g, expect, atol=1e-4, rtol=1e-4)
        assert torch.all(sign * (x0_g - x0_plain).mean(dim=(1, 2, 3)) > 0)
    out0 = classifier_guided(net, sched, clf, 0.0)(x_t, t, Cond(label=torch.ones(4, dtype=torch.long)))
    assert torch.allclose(out0, net(x_t, t))
    with pytest.raises(TypeError):
        classifier_guided(net, sched, clf, 1.0)(x_t, t, None)


def test_guidance_gradient_works_inside_the_sampling_loops_inference_mode():
    from synthpair.diffusion.sampling import sample

    sched = NoiseSchedule(DiffusionConfig(num_timesteps=50, prediction="eps"))
    net = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    hi = sample(classifier_guided(net, sched, MeanClassifier(), 5.0), sched, x_T, steps=5,
                cond=Cond(label=torch.tensor([1, 1])))
    lo = sample(classifier_guided(net, sched, MeanClassifier(), 5.0), sched, x_T, steps=5,
                cond=Cond(label=torch.tensor([0, 0])))
    assert torch.all(hi.mean(dim=(1, 2, 3)) > lo.mean(dim=(1, 2, 3)))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guidance")
    d = mr_data(root, n=16, size=16, per_patient=2, folds=2)
    info = json.loads((d / "dataset.json").read_text())
    for it in info["items"]:        # a class per item, as BUSI's benign_/malignant_ ids would give
        it["finding"] = "lesion" if it["foreground_fraction"] > 0 else "normal"
    (d / "dataset.json").write_text(json.dumps(info))
    return d


def test_item_classes(data, tmp_path):
    ds = PreparedDataset.open(data)
    by_field = item_classes(ds, "field:finding")
    assert set(by_field.values()) == {"lesion", "normal"} and len(by_field) == 16
    assert set(item_classes(ds, "prefix").values()) <= {i.split("_")[0] for i in ds.ids}
    f = tmp_path / "c.json"
    f.write_text(json.dumps({ds.ids[0]: "a", "unknown_item": "b"}))
    assert item_classes(ds, str(f)) == {ds.ids[0]: "a"}
    with pytest.raises(SynthpairError, match="choose 'prefix'"):
        item_classes(ds, "nothing-here")


def test_guidance_end_to_end(data, tmp_path):
    cfg = GuidanceConfig(classes="field:finding", generator=FIT, classifier=NETFIT, clean_classifier=NETFIT,
                         cg_scales=(1.0, 4.0), cfg_scales=(1.0, 3.0), n_per_class=2, steps=2, eval_batch=8,
                         n_examples=2, device="cpu")
    res = run_guidance(data, tmp_path / "out", cfg, progress=False)
    rows = res["tables"][0]["rows"]
    assert [(r["method"], r["scale"]) for r in rows] == [
        ("unguided (null class)", None), ("classifier guidance", 1.0), ("classifier guidance", 4.0),
        ("classifier-free guidance", 1.0), ("classifier-free guidance", 3.0)]
    for r in rows:
        assert 0.0 <= r["faithfulness"] <= 1.0 and r["n"] == 4 and r["fd"] >= 0
    assert res["classes"] == ["lesion", "normal"] and 0.0 <= res["real_test_accuracy"] <= 1.0
    assert (tmp_path / "out" / "figures" / "samples.png").is_file()


def test_guidance_refusals(data, tmp_path):
    with pytest.raises(SynthpairError, match="--keep 'benign'"):
        run_guidance(data, tmp_path / "o", GuidanceConfig(classes="field:finding", keep=("benign",), generator=FIT),
                     progress=False)
    with pytest.raises(SynthpairError, match="at least two classes"):
        run_guidance(data, tmp_path / "o", GuidanceConfig(classes="field:finding", keep=("lesion",), generator=FIT),
                     progress=False)
    assert not (tmp_path / "o").exists()
