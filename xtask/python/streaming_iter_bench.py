"""Time mosaicml-streaming's `StreamingDataset` iteration: the reference side of the read
benchmark in `cargo xtask bench data`.

    python streaming_iter_bench.py DATASET_DIR --shuffle --batch 8 --epochs 5 \
        --num-canonical-nodes 1 --seed 9176

Reads a local MDS folder (a temporary copy, so the dataset under test is left as it was) in one
process, with no DataLoader: `for sample in dataset` over `epochs` epochs, the same settings as
`tessera bench-stream` (shuffle algorithm and block size at streaming's defaults). Each sample's
`tokens` is summed, as tessera sums its tokens, so both sides touch every token.

Prints one JSON line: samples, tokens, the time to construct the dataset (`open_seconds`) and
the time to iterate (`seconds`), versions. If streaming cannot be imported it prints
{"skipped": "<reason>"} and exits 0, so the bench can record why.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", help="a local MDS folder (holding index.json)")
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--num-canonical-nodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=9176)
    args = p.parse_args()
    if args.epochs < 1 or args.batch < 1:
        p.error("--epochs and --batch must be at least 1")

    try:
        import numpy as np
        import streaming
        from streaming import StreamingDataset
        from streaming.base.util import clean_stale_shared_memory
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        print(json.dumps({"skipped": f"mosaicml-streaming not importable: {type(e).__name__}: {e}"}))
        return 0

    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory(prefix="tessera-streaming-bench-") as tmp:
        local = f"{tmp}/ds"
        shutil.copytree(args.dataset, local)
        t = time.perf_counter()
        ds = StreamingDataset(
            local=local,
            shuffle=args.shuffle,
            shuffle_seed=args.seed,
            batch_size=args.batch,
            num_canonical_nodes=args.num_canonical_nodes,
        )
        open_seconds = time.perf_counter() - t

        samples = tokens = token_sum = 0
        t = time.perf_counter()
        for _ in range(args.epochs):
            for sample in ds:
                toks = sample["tokens"]
                samples += 1
                tokens += len(toks)
                token_sum += int(toks.sum(dtype=np.int64))
        seconds = time.perf_counter() - t
        dataset_samples = ds.num_samples
        del ds

    print(
        json.dumps(
            {
                "samples": samples,
                "tokens": tokens,
                "token_sum": token_sum,
                "dataset_samples": dataset_samples,
                "open_seconds": open_seconds,
                "seconds": seconds,
                "samples_per_s": samples / seconds,
                "tokens_per_s": tokens / seconds,
                "streaming": streaming.__version__,
                "python": sys.version.split()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
