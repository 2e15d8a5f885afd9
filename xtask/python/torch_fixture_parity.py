"""transformers' own MptForCausalLM on a GPU against the fixtures it wrote on the CPU.

    python torch_fixture_parity.py fixtures/mpt --device cuda [--tf32]

The yardstick for `tessera parity --device cuda`: how far the same reference implementation
lands from its CPU outputs when its fp32 matmuls run on the GPU, with TF32 off and on (burn's
CUDA backend always rounds f32 matmul inputs through TF32). Prints one JSON line per checkpoint:
the max |logit diff| over both sequences, the |mean loss diff| and the worst gradient error
relative to each parameter's largest |gradient| (the same measures `tessera parity` prints).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mpt_dir")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tf32", action="store_true")
    a = p.parse_args()
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from transformers import MptConfig, MptForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    dev = torch.device(a.device)
    for d in sorted(pathlib.Path(a.mpt_dir).iterdir()):
        if not (d / "grads.safetensors").is_file():
            continue
        cfg = json.loads((d / "config.json").read_text())
        attn = dict(cfg.get("attn_config") or {})
        if isinstance(attn.get("attn_pdrop"), float) and attn["attn_pdrop"] == 0.0:
            attn["attn_pdrop"] = 0  # transformers 5's strict config wants an int
        cfg["attn_config"] = attn
        for k in ("architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "dtype"):
            cfg.pop(k, None)
        model = MptForCausalLM(MptConfig(**cfg))
        ratio = cfg.get("expansion_ratio", 4)
        if ratio != 4:  # transformers hard-codes 4 × d_model; gen_mpt.py swaps the projections
            hidden, dm = int(ratio * cfg["d_model"]), cfg["d_model"]
            for block in model.transformer.blocks:
                block.ffn.up_proj = torch.nn.Linear(dm, hidden, bias=False)
                block.ffn.down_proj = torch.nn.Linear(hidden, dm, bias=False)
        missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
        model.to(dev).float().eval()
        ids = torch.from_numpy(np.load(d / "input_ids.npy")).to(dev)
        mask = torch.from_numpy(np.load(d / "attention_mask.npy")).to(dev)
        worst_logits = 0.0
        with torch.no_grad():
            for row in range(ids.shape[0]):
                f = d / f"logits_seq{row}.npy"
                if not f.is_file():
                    continue
                n = int(mask[row].sum())
                got = model(input_ids=ids[row : row + 1, :n]).logits[0].float().cpu().numpy()
                worst_logits = max(worst_logits, float(np.abs(got - np.load(f)).max()))
        targets = torch.from_numpy(np.load(d / "target_ids.npy")).to(dev)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, : targets.shape[1]]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100
        )
        loss.backward()
        want_loss = json.loads((d / "index.json").read_text())["mean_loss"]
        want = load_file(str(d / "grads.safetensors"))
        worst = (0.0, "")
        for name, param in model.named_parameters():
            if name not in want or param.grad is None:
                continue
            w = want[name].float()
            rel = float((param.grad.cpu().float() - w).abs().max() / w.abs().max().clamp_min(1e-12))
            if rel > worst[0]:
                worst = (rel, name)
        print(json.dumps({
            "checkpoint": d.name, "device": a.device, "tf32": a.tf32,
            "logits_max_abs_diff": worst_logits, "loss_abs_diff": abs(loss.item() - want_loss),
            "grad_max_rel_diff": worst[0], "grad_worst_param": worst[1],
            "unexpected_or_missing": len(missing) + len(unexpected),
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
