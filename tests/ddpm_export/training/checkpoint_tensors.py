"""Shared by the train and distill tests: every tensor of a run's last.pt, for bit-equality checks."""


def checkpoint_tensors(ckpt):
    """{name: tensor} over the model, its EMA and the optimizer state."""
    out = {}
    for k in ("model", "ema"):
        for n, v in ckpt[k].items():
            out[f"{k}.{n}"] = v
    for i, st in ckpt["optimizer"]["state"].items():
        for n, v in st.items():
            out[f"opt.{i}.{n}"] = v
    return out


def crash_after_first_checkpoint(monkeypatch, module, run):
    """Run ``run()`` with ``module.save_checkpoint`` raising KeyboardInterrupt right after its first
    save (a run killed just after a checkpoint), then restore it."""
    import pytest

    real_save = module.save_checkpoint

    def save_then_die(ckpt, path):
        real_save(ckpt, path)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(module, "save_checkpoint", real_save)


def assert_bit_equal(ckpt_a, ckpt_b):
    import torch

    ta, tb = checkpoint_tensors(ckpt_a), checkpoint_tensors(ckpt_b)
    unequal = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert ta.keys() == tb.keys() and not unequal, f"{len(unequal)} tensors differ after resume, e.g. {unequal[:3]}"
