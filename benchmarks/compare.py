"""Side-by-side kernel table; see ``pyinterp.bench.compare`` (same as ``pyinterp bench``)."""
import sys

from pyinterp.bench.compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
