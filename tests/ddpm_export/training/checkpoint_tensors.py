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
