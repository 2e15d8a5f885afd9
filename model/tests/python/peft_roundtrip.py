"""The Python half of tessera's PEFT interop tests (model/tests/peft.rs drives it).

Two commands, each writing float32 logits as .npy files for the Rust test to compare:

  score BASE ADAPTER MERGED IDS OUT
      transformers' MptForCausalLM loads BASE, peft's PeftModel.from_pretrained puts the
      adapter folder ADAPTER (written by tessera) on it: OUT/peft_logits.npy. MptForCausalLM
      loads the merged folder MERGED (written by tessera): OUT/merged_logits.npy.

  make BASE ADAPTER IDS OUT
      peft adds a LoRA adapter with random A and B (init_lora_weights=False) to BASE and saves
      it to ADAPTER: OUT/peft_logits.npy from the adapted model, OUT/merged_logits.npy after
      merge_and_unload().

IDS is the token ids, rows separated by ';' and ids by ',' (all rows the same length).
"""

import sys

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import MptForCausalLM


def load(path):
    model = MptForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float().numpy()


def main(argv):
    cmd = argv[1]
    if cmd == "score":
        base, adapter, merged, ids, out = argv[2:7]
    elif cmd == "make":
        base, adapter, ids, out = argv[2:6]
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    ids = torch.tensor([[int(t) for t in row.split(",")] for row in ids.split(";")])
    torch.manual_seed(1234)
    if cmd == "score":
        peft_model = PeftModel.from_pretrained(load(base), adapter).eval()
        np.save(f"{out}/peft_logits.npy", logits(peft_model, ids))
        np.save(f"{out}/merged_logits.npy", logits(load(merged), ids))
    else:
        config = LoraConfig(
            r=4,
            lora_alpha=12,
            lora_dropout=0.0,
            target_modules=["Wqkv", "out_proj", "up_proj", "down_proj"],
            use_rslora=True,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(load(base), config).eval()
        # init_lora_weights=False keeps nn.Linear's init for A and B; make sure B is not zero.
        b = peft_model.base_model.model.transformer.blocks[0].attn.Wqkv.lora_B["default"].weight
        assert b.abs().max() > 0, "lora_B is zero: the adapter would change nothing"
        peft_model.save_pretrained(adapter)
        np.save(f"{out}/peft_logits.npy", logits(peft_model, ids))
        merged = peft_model.merge_and_unload().eval()
        np.save(f"{out}/merged_logits.npy", logits(merged, ids))


if __name__ == "__main__":
    main(sys.argv)
