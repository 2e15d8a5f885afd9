"""Read an MDS dataset with mosaicml-streaming itself and print every sample as a JSON line.

Used by tessera's `data/tests/mds_python.rs` (ignored unless Python has mosaicml-streaming) to
check that datasets tessera writes are read back by streaming's own `StreamingDataset`,
unshuffled, exactly as tessera wrote them.

    python read_with_streaming.py DATASET_DIR[=HASH_ALGO] [DATASET_DIR[=HASH_ALGO] ...]

`=HASH_ALGO` turns on streaming's `validate_hash` for that dataset. For each dataset the output
is a line `# DATASET_DIR`, then one line per sample in order: {column: value}, where ndarrays are
{"dtype": str, "shape": [...], "values": [...flat C order...]}, bytes are {"hex": "..."},
decimals are {"decimal": "..."}, NumPy scalars are plain numbers, everything else is as decoded.
Exit status 0 on success; streaming's own exception (and status 1) otherwise.
"""
from __future__ import annotations

import argparse
import decimal
import json
import shutil
import sys
import tempfile

import numpy as np


def to_jsonable(v):
    if isinstance(v, np.ndarray):
        return {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.ravel().tolist()}
    if isinstance(v, (bytes, bytearray)):
        return {"hex": bytes(v).hex()}
    if isinstance(v, decimal.Decimal):
        return {"decimal": str(v)}
    if isinstance(v, np.generic):
        return v.item()
    return v


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="+", help="DATASET_DIR or DATASET_DIR=HASH_ALGO")
    args = ap.parse_args()

    # Imported here (slow: it loads torch) so that argument errors come first.
    from streaming import StreamingDataset

    out = sys.stdout
    for n, spec in enumerate(args.datasets):
        local_src, _, algo = spec.partition("=")
        # StreamingDataset may write decompressed shards next to the compressed ones; read a copy
        # so the dataset under test stays as tessera wrote it.
        with tempfile.TemporaryDirectory() as tmp:
            local = f"{tmp}/ds{n}"
            shutil.copytree(local_src, local)
            ds = StreamingDataset(local=local, shuffle=False, batch_size=1, validate_hash=algo or None)
            out.write(f"# {local_src}\n")
            for i in range(ds.num_samples):
                sample = ds[i]
                out.write(json.dumps({k: to_jsonable(v) for k, v in sample.items()}, sort_keys=True))
                out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
