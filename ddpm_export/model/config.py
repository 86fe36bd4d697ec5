"""Model shape and presets: the dataclass saved inside every checkpoint.

A checkpoint carries ``UNetConfig.to_dict()`` and ``ScheduleConfig.to_dict()``,
so a checkpoint alone rebuilds its model (nanoGPT's ``model_args``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Optional, Tuple

from runtime.schedulers.schedule import ScheduleConfig


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the DDPM U-Net (Ho et al. 2020, appendix B; official ``unet.py``)."""

    image_size: int = 32  # H = W of the images
    in_channels: int = 3  # C of the images (the model predicts eps of the same shape)
    ch: int = 128  # base channel count
    ch_mult: Tuple[int, ...] = (1, 2, 2, 2)  # channel multiplier per resolution level
    num_res_blocks: int = 2  # ResBlocks per level on the way down (one more on the way up)
    attn_resolutions: Tuple[int, ...] = (16,)  # feature-map sizes that get self-attention
    dropout: float = 0.1  # dropout inside each ResBlock
    num_groups: int = 32  # GroupNorm groups
    norm_eps: float = 1e-6  # GroupNorm epsilon (the TF default of the official code)
    # Class conditioning: 0 = unconditional; K > 0 = labels 0..K-1 plus the null label K
    # (classifier-free guidance, Ho & Salimans 2021). Left out of to_dict() when 0, so an
    # unconditional config, checkpoint and manifest are exactly what they were before.
    num_classes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        levels = len(self.ch_mult)
        if self.image_size % (2 ** (levels - 1)):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**{levels - 1} "
                f"(ch_mult has {levels} levels); pick a size that is"
            )
        for m in self.ch_mult:
            if (self.ch * m) % self.num_groups:
                raise ValueError(
                    f"channels {self.ch * m} (ch={self.ch} x mult {m}) are not divisible "
                    f"by num_groups={self.num_groups}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(
                f"num_classes must be an int >= 0 (0: unconditional), got {self.num_classes!r}"
            )

    @property
    def null_label(self) -> Optional[int]:
        """The class index that means "no label" (the unconditional branch of classifier-free
        guidance, and what label dropout trains): num_classes, the embedding's last row.
        None for an unconditional model. The one place that defines it."""
        return self.num_classes if self.num_classes > 0 else None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        if self.num_classes == 0:
            del d["num_classes"]  # unconditional: the dict of every checkpoint before conditioning
        else:
            d["null_label"] = self.null_label  # recorded for readers of the checkpoint, checked on load
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "UNetConfig":
        d = dict(d)
        null = d.pop("null_label", None)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {sorted(unknown)}")
        config = cls(**d)
        if null is not None and null != config.null_label:
            raise ValueError(
                f"null_label {null!r} does not match num_classes {config.num_classes} (the null "
                f"label is always num_classes, the last embedding row); the config is damaged"
            )
        return config


@dataclass(frozen=True)
class Preset:
    """A named model + schedule + training defaults."""

    name: str
    unet: UNetConfig
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: str = "digits"  # default data source
    hflip: bool = True  # random horizontal flip during training
    steps: int = 800_000  # default training steps
    warmup: int = 5000  # linear learning-rate warmup steps
    sample_every: int = 10_000  # steps between sample grids
    ckpt_every: int = 10_000  # steps between checkpoints
    # conditional presets (unet.num_classes > 0): the share of training labels replaced by
    # the null label, so one network also learns the unconditional model that classifier-free
    # guidance needs (p_uncond = 0.1 in Ho & Salimans 2021). Unused when unconditional.
    label_dropout: float = 0.1


PRESETS: Dict[str, Preset] = {
    # The paper's CIFAR-10 model: exactly 35,746,307 parameters.
    "cifar10": Preset(
        name="cifar10",
        unet=UNetConfig(),
        data="cifar10",
        hflip=True,
    ),
    # A small model of the same family for the sklearn digits upsampled to 16x16,
    # trainable in tens of minutes on 2 CPU cores.
    "digits": Preset(
        name="digits",
        unet=UNetConfig(
            image_size=16,
            in_channels=1,
            ch=32,
            ch_mult=(1, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(8,),
            dropout=0.0,  # 3000 steps over 1797 images: too short to need it
            num_groups=8,
        ),  # 1,623,169 parameters
        data="digits",
        hflip=False,  # a mirrored 2 is not a digit
        steps=3000,
        warmup=200,
        sample_every=1000,
        ckpt_every=500,
    ),
    # A tiny model for tests: seconds on a CPU.
    "tiny": Preset(
        name="tiny",
        unet=UNetConfig(
            image_size=8,
            in_channels=1,
            ch=16,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
            dropout=0.1,  # on, so tests see dropout's RNG restored on resume
            num_groups=8,
        ),
        data="digits",
        hflip=False,
        steps=20,
        warmup=5,
        sample_every=10,
        ckpt_every=10,
    ),
}
# The digits model with the digit as a class label (0..9, null label 10) and label dropout
# for classifier-free guidance; the same schedule and training length as digits.
PRESETS["digits-cond"] = replace(
    PRESETS["digits"], name="digits-cond", unet=replace(PRESETS["digits"].unet, num_classes=10)
)
# tiny with class labels, for tests
PRESETS["tiny-cond"] = replace(
    PRESETS["tiny"], name="tiny-cond", unet=replace(PRESETS["tiny"].unet, num_classes=10)
)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; expected one of {sorted(PRESETS)}"
        ) from None
