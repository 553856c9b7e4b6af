"""The variants torch.nn lacks (GRU with the reset before, peephole and coupled-gate LSTM, MGU,
minGRU, minLSTM) on our CPU backends: the reference loop (the minimal cells' parallel scan), the
PyTorch loops (``cpu-python``) and the compiled loops (``cpu``), each against torch.nn's
standard cell of its family (the GRU for the MGU and minGRU, the LSTM for minLSTM), through
``gatedrnn bench``; writes JSON and prints the tables. Nothing here is asserted in CI.

    python benchmarks/variant_speed.py                    # H 128, 256; B 1, 32; T 100
    python benchmarks/variant_speed.py --hidden 512 --batch 16

Extra arguments are those of `gatedrnn bench` (the later of two wins).
"""

import sys
from pathlib import Path

from gatedrnn.cli import main

VARIANTS = (
    "gru:reset=before,lstm:peepholes=true,lstm:coupled=true,lstm:peepholes=true:coupled=true,mgu,"
    "mingru,minlstm"
)

if __name__ == "__main__":
    out = Path(__file__).parent / "results" / "variant_speed.json"
    defaults = ["--cells", VARIANTS, "--backends", "reference,cpu-python,cpu"]
    defaults += ["--hidden", "128,256", "--batch", "1,32", "--out", str(out)]
    sys.exit(main(["bench", *defaults, *sys.argv[1:]]))
