# Hand-written (not exported): `python -m sgxl` runs the `sgxl` console script.
import sys

from sgxl.cli import main

if __name__ == '__main__':
    sys.exit(main())
