"""`python -m benchmark.predict`: the same command as `python -m benchmark predict`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
