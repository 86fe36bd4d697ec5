"""Class-conditional training: labels from the digits, label dropout to the null label, exact resume."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddpm_export.cli.main import main
from ddpm_export.model.checkpoint import load_checkpoint, load_model
from ddpm_export.model.diffusion import GaussianDiffusion
from ddpm_export.training.data import DataError, digits_images, digits_labels, load_labelled_images
from ddpm_export.training.train import TrainConfig, TrainError, drop_labels, train
from checkpoint_tensors import checkpoint_tensors  # noqa: E402  (beside this file)


def _cfg(out, **kw):
    base = dict(preset="tiny-cond", out=str(out), steps=4, batch_size=8, sample_every=0,
                ckpt_every=2, log_every=2, seed=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_digits_come_with_their_labels_and_other_sources_are_refused(tmp_path):
    x, y = load_labelled_images("digits", None, 8, 1, num_classes=10)
    assert x.shape == (1797, 1, 8, 8) and y.dtype == np.int64 and y.shape == (1797,)
    assert sorted(set(y.tolist())) == list(range(10))
    assert np.array_equal(y, digits_labels())
    assert load_labelled_images("digits", None, 8, 1)[1] is None  # unconditional: no labels
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match=r"class-conditional model \(10 classes\) needs labelled data.*"
                                        r"imgs has no labels.*drop --data"):
        load_labelled_images("digits", str(tmp_path / "imgs"), 8, 1, num_classes=10)
    with pytest.raises(DataError, match="labels 0..9, the model has num_classes=5"):
        load_labelled_images("digits", None, 8, 1, num_classes=5)


def test_label_dropout_rate_and_kept_labels():
    labels = torch.arange(200_000) % 10
    for p in (0.1, 0.3):
        out = drop_labels(labels, p, 10, torch.Generator().manual_seed(0))
        dropped = out == 10
        assert abs(dropped.float().mean().item() - p) < 0.005, p
        assert torch.equal(out[~dropped], labels[~dropped])  # the others are untouched
    # p = 0 drops none, and draws as many numbers as any p (the data order never depends on p)
    g0, g1 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(drop_labels(labels[:100], 0.0, 10, g0), labels[:100])
    drop_labels(labels[:100], 0.5, 10, g1)
    assert torch.equal(g0.get_state(), g1.get_state())


def test_training_feeds_each_image_its_digit_or_the_null_label(tmp_path, monkeypatch):
    seen = []
    real_loss = GaussianDiffusion.loss

    def spy(self, model, x0, t, noise, class_labels=None):
        seen.append((x0.clone(), class_labels.clone()))
        return real_loss(self, model, x0, t, noise, class_labels=class_labels)

    monkeypatch.setattr(GaussianDiffusion, "loss", spy)
    train(_cfg(tmp_path, steps=2, batch_size=128, label_dropout=0.5, ckpt_every=0), progress=False)
    images = torch.from_numpy(digits_images(8)).flatten(1)
    digit = torch.from_numpy(digits_labels())
    x0 = torch.cat([x for x, _ in seen]).flatten(1)
    y = torch.cat([y for _, y in seen])
    assert y.dtype == torch.int64 and y.shape == (256,)
    null = y == 10
    assert 0.35 < null.float().mean().item() < 0.65
    # a kept label is the digit of its own image (found by exact match in the data set)
    for xi, yi in zip(x0[~null], y[~null]):
        rows = (images == xi).all(1).nonzero().flatten()
        assert len(rows) >= 1 and yi.item() in set(digit[rows].tolist())


def test_conditional_resume_continues_exactly(tmp_path):
    # the label-dropout draws come from the data generator saved in last.pt
    train(_cfg(tmp_path / "straight"), progress=False)
    train(_cfg(tmp_path / "split", steps=2), progress=False)
    train(_cfg(tmp_path / "split", resume=True), progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 4
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys() and "model.class_embedding.weight" in ta
    unequal = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not unequal, f"{len(unequal)} tensors differ after resume, e.g. {unequal[:3]}"
    assert a["model_config"]["num_classes"] == 10 and a["model_config"]["null_label"] == 10
    assert a["train_config"]["label_dropout"] == 0.1  # the preset's default
    # the class embedding learned (so the equality above covers the label path)
    torch.manual_seed(1)
    from ddpm_export.model.unet import UNet
    init = UNet(load_model(tmp_path / "straight" / "model.pt")[0].config).state_dict()
    assert (a["model"]["class_embedding.weight"] - init["class_embedding.weight"]).abs().max() > 1e-5
    with pytest.raises(TrainError, match=r"label_dropout 0.1 -> 0.2"):
        train(_cfg(tmp_path / "split", steps=6, resume=True, label_dropout=0.2), progress=False)


def test_label_dropout_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"label_dropout 0.1 is for class-conditional presets; "
                                         r"preset 'tiny' is unconditional.*digits-cond"):
        train(_cfg(tmp_path, preset="tiny", label_dropout=0.1), progress=False)
    with pytest.raises(ValueError, match=r"label_dropout must be in \[0, 1\).*got 1.0"):
        train(_cfg(tmp_path, label_dropout=1.0), progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_cli_trains_the_digits_cond_preset(tmp_path):
    r = CliRunner().invoke(main, ["train", "--preset", "digits-cond", "--out", str(tmp_path / "run"),
                                  "--steps", "0", "--sample-every", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    model, ck = load_model(tmp_path / "run" / "model.pt")
    assert model.null_label == 10 and ck["model_config"]["image_size"] == 16
    assert ck["train_config"]["label_dropout"] == 0.1 and ck["provenance"]["preset"] == "digits-cond"
    r = CliRunner().invoke(main, ["train", "--preset", "digits-cond", "--out", str(tmp_path / "imgs"),
                                  "--data", str(tmp_path), "--steps", "0", "--no-progress"])
    assert r.exit_code == 1 and "needs labelled data" in r.output
    r = CliRunner().invoke(main, ["train", "--preset", "digits", "--out", str(tmp_path / "u"),
                                  "--label-dropout", "0.1", "--steps", "0", "--no-progress"])
    assert r.exit_code == 1 and "for class-conditional presets" in r.output
