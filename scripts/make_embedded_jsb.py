"""Convert JSB Chorales (Boulanger-Lewandowski et al. 2012 piano rolls, ../shared/data) into the
compact archive shipped inside the package, src/gatedrnn/data/jsb_chorales.npz.

    python scripts/make_embedded_jsb.py [path/to/JSB_Chorales.mat]

The archive holds, per split, every time step of every sequence as 88 bits packed into 11 bytes
(``np.packbits`` along the keys) and the sequence lengths; ``gatedrnn.data.piano_rolls`` reads it.
The source file is checked against its sha256 first.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import scipy.io

SOURCE_SHA256 = "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4"
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    default = ROOT.parent / "shared" / "data" / "jsb_chorales" / "JSB_Chorales.mat"
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{source}: sha256 {digest}, expected {SOURCE_SHA256}")
    mat = scipy.io.loadmat(source)
    arrays = {}
    for split in ("train", "valid", "test"):
        rolls = [np.asarray(r, dtype=np.uint8) for r in mat[f"{split}data"][0]]
        assert all(r.shape[1] == 88 and r.max() <= 1 for r in rolls)
        arrays[f"{split}_bits"] = np.packbits(np.concatenate(rolls), axis=1)  # (ΣT, 11)
        arrays[f"{split}_lengths"] = np.array([len(r) for r in rolls], dtype=np.int32)
    target = ROOT / "src" / "gatedrnn" / "data" / "jsb_chorales.npz"
    np.savez_compressed(target, **arrays)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    print(f"wrote {target} ({target.stat().st_size} bytes, sha256 {digest}: the registry's")
    print("embedded_sha256 for jsb in src/gatedrnn/data/music.py must say so)")


if __name__ == "__main__":
    main()
