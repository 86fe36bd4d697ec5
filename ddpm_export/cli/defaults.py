"""Command-line defaults read from the library objects that define them, never repeated.

``library_option("--lr", default_from="ddpm_export.training.train:TrainConfig.lr")`` is a
click option whose default (and the ``[default: ...]`` in ``--help``) is
``TrainConfig.lr``. The object is imported only when the default is needed (the
command runs, or its help is shown), so loading the CLI stays free of torch.
"""
from __future__ import annotations

import importlib
from typing import Any

import click


def library_default(default_from: str) -> Any:
    """The object named "package.module:Name.attribute" (a dataclass field's default, a constant)."""
    module, _, path = default_from.partition(":")
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class LibraryDefaultOption(click.Option):
    def __init__(self, *decls: Any, default_from: str, **kw: Any):
        kw.setdefault("show_default", True)
        super().__init__(*decls, **kw)
        self.default_from = default_from

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        if ctx.lookup_default(self.name, call=False) is not None:  # a default_map entry wins
            return super().get_default(ctx, call=call)
        return library_default(self.default_from)


def library_option(*decls: Any, default_from: str, **kw: Any):
    """click.option whose default is ``library_default(default_from)``."""
    return click.option(*decls, cls=LibraryDefaultOption, default_from=default_from, **kw)
