"""Time mosaicml-streaming read through a torch DataLoader: the reference side of the read
benchmark in `cargo xtask bench data`.

    python streaming_iter_bench.py DATASET_DIR --shuffle --batch 8 --epochs 5 \
        --num-canonical-nodes 1 --seed 9176 --num-workers 2

Reads a local MDS folder (a temporary copy, so the dataset under test is left as it was) the way
llm-foundry feeds training: a `StreamingDataset` (shuffle algorithm and block size at streaming's
defaults, the same settings as `tessera bench-stream`) whose `__getitem__` returns the sample's
`tokens` as an int64 tensor, as llm-foundry's `StreamingTextDataset` does for pre-tokenized
samples, wrapped in `torch.utils.data.DataLoader(batch_size=B, num_workers=N, drop_last=True,
persistent_workers=N > 0)`, whose default collate stacks each batch into a LongTensor [B, seq_len].
Each batch is summed in the consuming (main) process, as tessera sums its batches, so both sides
touch every token.

Prints one JSON line: samples, tokens, token sum, the time to construct the dataset and the
DataLoader (`open_seconds`), the time to iterate every epoch (`seconds`; it includes starting the
workers on the first epoch, reported apart as `first_batch_seconds`), versions. If streaming or
torch cannot be imported it prints {"skipped": "<reason>"} and exits 0, so the bench can record
why.
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
    p.add_argument("--num-workers", type=int, default=0, help="the DataLoader's worker processes")
    args = p.parse_args()
    if args.epochs < 1 or args.batch < 1 or args.num_workers < 0:
        p.error("--epochs and --batch must be at least 1, --num-workers at least 0")

    try:
        import numpy as np
        import streaming
        import torch
        from streaming import StreamingDataset
        from streaming.base.util import clean_stale_shared_memory
        from torch.utils.data import DataLoader
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        print(json.dumps({"skipped": f"mosaicml-streaming or torch not importable: {type(e).__name__}: {e}"}))
        return 0

    class TokenDataset(StreamingDataset):
        """A sample's token ids as an int64 tensor (llm-foundry's pre-tokenized path)."""

        def __getitem__(self, idx):
            return torch.from_numpy(super().__getitem__(idx)["tokens"].astype(np.int64))

    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory(prefix="tessera-streaming-bench-") as tmp:
        local = f"{tmp}/ds"
        shutil.copytree(args.dataset, local)
        t = time.perf_counter()
        ds = TokenDataset(
            local=local,
            shuffle=args.shuffle,
            shuffle_seed=args.seed,
            batch_size=args.batch,
            num_canonical_nodes=args.num_canonical_nodes,
        )
        loader = DataLoader(
            ds,
            batch_size=args.batch,
            num_workers=args.num_workers,
            drop_last=True,
            persistent_workers=args.num_workers > 0,
        )
        open_seconds = time.perf_counter() - t

        samples = tokens = token_sum = batches = 0
        shape = dtype = first_batch_seconds = None
        t = time.perf_counter()
        for _ in range(args.epochs):
            for batch in loader:
                if first_batch_seconds is None:
                    first_batch_seconds = time.perf_counter() - t
                    shape = list(batch.shape)
                    dtype = str(batch.dtype)
                batches += 1
                samples += batch.shape[0]
                tokens += batch.numel()
                token_sum += int(batch.sum())
        seconds = time.perf_counter() - t
        dataset_samples = ds.num_samples
        del loader, ds

    if batches == 0:
        print(json.dumps({"skipped": f"no full batch of {args.batch} samples in an epoch"}))
        return 0
    print(
        json.dumps(
            {
                "samples": samples,
                "tokens": tokens,
                "token_sum": token_sum,
                "batches": batches,
                "batch_shape": shape,
                "batch_dtype": dtype,
                "dataset_samples": dataset_samples,
                "num_workers": args.num_workers,
                "open_seconds": open_seconds,
                "first_batch_seconds": first_batch_seconds,
                "seconds": seconds,
                "samples_per_s": samples / seconds,
                "tokens_per_s": tokens / seconds,
                "streaming": streaming.__version__,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
