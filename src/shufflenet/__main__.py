"""``python -m shufflenet`` (also what ``torchrun -m shufflenet`` runs)."""

import sys

from shufflenet.cli import main

if __name__ == "__main__":
    sys.exit(main())
