"""Time llm-foundry's JSON-to-MDS converter: the reference side of `cargo xtask bench data`.

    python llmfoundry_convert_bench.py --jsonl CORPUS.jsonl --tokenizer tokenizer.json \
        --out DIR --seq-len 2048 --repeats 3

Calls `llmfoundry.command_utils.convert_dataset_json` — the function behind llm-foundry's
`scripts/data_prep/convert_dataset_json.py` — in concat mode (`--concat_tokens SEQ_LEN`), with
`--eos_text '<|endoftext|>'` (gpt-neox adds no BOS/EOS itself, so this is what joins documents
with EOS, as `tessera data prepare` does), no compression, wrapping, one process. Each repeat
writes a fresh `DIR/run-N` with a fresh, empty Hugging Face datasets cache, so every run pays for
the JSON-to-Arrow load as a first conversion does. The timed span is the converter call (tokenizer
load, dataset load, tokenization, MDS writing); interpreter start-up and imports are reported
apart as `import_seconds`.

`AutoTokenizer.from_pretrained` needs a folder, so the tokenizer.json is copied into a temporary
one next to the gpt-neox-20b `tokenizer_config.json` settings (GPTNeoXTokenizer, every special
token `<|endoftext|>`, no BOS/EOS added).

Prints one JSON line: best (fastest) seconds, every run's seconds, samples and tokens written,
versions. If llm-foundry cannot be imported it prints {"skipped": "<reason>"} and exits 0, so the
bench can record why.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--jsonl", required=True, help="decompressed JSON Lines, {'text': ...} per line")
    p.add_argument("--tokenizer", required=True, help="a Hugging Face tokenizer.json")
    p.add_argument("--out", required=True, help="folder for the runs' outputs (must not exist)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    # No network: the tokenizer and the data are local files.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    scratch = tempfile.mkdtemp(prefix="tessera-foundry-bench-")
    try:
        return run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args, scratch: str) -> int:
    # The datasets cache location is read when `datasets` is imported: set it first.
    os.environ["HF_DATASETS_CACHE"] = os.path.join(scratch, "hf-cache-0")
    t = time.perf_counter()
    try:
        import datasets
        import llmfoundry
        import streaming
        import transformers
        from llmfoundry.command_utils import convert_dataset_json
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        print(json.dumps({"skipped": f"llm-foundry not importable: {type(e).__name__}: {e}"}))
        return 0
    import_seconds = time.perf_counter() - t

    tok_dir = os.path.join(scratch, "tokenizer")
    os.makedirs(tok_dir)
    shutil.copyfile(args.tokenizer, os.path.join(tok_dir, "tokenizer.json"))
    with open(os.path.join(tok_dir, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "GPTNeoXTokenizer",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "add_prefix_space": False,
                "add_bos_token": False,
                "add_eos_token": False,
            },
            f,
        )

    os.makedirs(args.out)
    runs = []
    for n in range(args.repeats):
        out = os.path.join(args.out, f"run-{n}")
        cache = os.path.join(scratch, f"hf-cache-{n}")
        datasets.config.HF_DATASETS_CACHE = cache
        t = time.perf_counter()
        convert_dataset_json(
            path=args.jsonl,
            out_root=out,
            compression=None,
            concat_tokens=args.seq_len,
            split="train",
            tokenizer=tok_dir,
            bos_text="",
            eos_text="<|endoftext|>",
            no_wrap=False,
        )
        runs.append(time.perf_counter() - t)
        shutil.rmtree(cache, ignore_errors=True)

    with open(os.path.join(args.out, "run-0", "index.json")) as f:
        index = json.load(f)
    samples = sum(s["samples"] for s in index["shards"])
    best = min(runs)
    print(
        json.dumps(
            {
                "seconds": best,
                "runs": runs,
                "import_seconds": import_seconds,
                "samples": samples,
                "tokens": samples * args.seq_len,
                "tokens_per_s": samples * args.seq_len / best,
                "out": os.path.join(args.out, "run-0"),
                "llmfoundry": llmfoundry.__version__,
                "transformers": transformers.__version__,
                "datasets": datasets.__version__,
                "streaming": streaming.__version__,
                "python": sys.version.split()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
