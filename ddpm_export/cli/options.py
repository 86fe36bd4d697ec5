"""Options that several commands share, defined once."""
from __future__ import annotations

import click

allow_host_code_option = click.option(
    "--allow-host-code", is_flag=True,
    help="TensorRT only: load a version-compatible plan, which embeds host code that runs in "
    "this process; only for a plan you trust (else such a plan is refused).")
