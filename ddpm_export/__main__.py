"""``python -m ddpm_export ...``: the same command line as the ``ddpm-export`` script."""
from ddpm_export.cli.entry import main

if __name__ == "__main__":
    main()
