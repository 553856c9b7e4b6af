"""Layer speed and memory of our backends against torch.nn; writes JSON and prints ratio tables.

    python benchmarks/layer_speed.py                      # the full grid (a few minutes on 2 cores)
    python benchmarks/layer_speed.py --hidden 128 --batch 32

Extra arguments are those of `gatedrnn bench`. Nothing here is asserted in CI.
"""

import sys
from pathlib import Path

from gatedrnn.cli import main

if __name__ == "__main__":
    out = Path(__file__).parent / "results" / "layer_speed.json"
    sys.exit(main(["bench", "--out", str(out), *sys.argv[1:]]))
