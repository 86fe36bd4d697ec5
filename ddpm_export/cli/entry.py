"""Console-script entry: a clear message when the training extra is missing.

The ``ddpm-export`` script is installed with the package, but its commands need
click and torch (``pip install 'ddpm-export[train]'``); a runtime-only install
should say so instead of printing an ImportError traceback.
"""
import sys


def main() -> None:
    missing = []
    for name in ("click", "torch"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        sys.stderr.write(
            f"error: the ddpm-export command needs {' and '.join(missing)} (not installed); "
            f"pip install 'ddpm-export[train]' (install a CPU build of torch first on machines "
            f"without a GPU). Sampling alone needs only: python -m runtime.sample --engine NAME.onnx\n"
        )
        sys.exit(1)
    from ddpm_export.cli.main import main as cli_main

    cli_main()
