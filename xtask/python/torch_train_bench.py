"""Time PyTorch training of an MPT shape: the reference side of `cargo xtask bench train` (CPU)
and of `xtask/scripts/gpu-check.sh` (`--device cuda`, optionally `--dtype bf16` autocast).

    python torch_train_bench.py --d-model 256 --n-heads 4 --n-layers 6 --expansion 4 \
        --vocab 4096 --seq 128 --batch 16 --microbatch 16 --threads 2 --warmup 2 --steps 5

Builds transformers' `MptForCausalLM` from a config with the given shape (fp32, no dropout),
then runs `warmup` untimed and `steps` timed optimizer steps of torch's AdamW, each step
accumulating `batch / microbatch` forward+backward passes over random token ids (the loss is
transformers' own shifted cross-entropy, from `labels=input_ids`).

transformers' MPT always uses ALiBi, has no linear biases and hard-codes an FFN of 4 × d_model;
`--expansion` other than 4 replaces each block's `up_proj`/`down_proj` so the matmul shapes match
the tessera model being compared. The differences that remain (ALiBi instead of learned
positions, no biases) are a few element-wise ops per layer; the script reports them in its
output so the bench table can say so.

Prints one JSON line: tokens_per_s, step_ms, the torch/transformers versions and threads. If
torch or transformers cannot be imported it prints {"skipped": "<reason>"} and exits 0, so the
bench can record why.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, required=True)
    p.add_argument("--n-heads", type=int, required=True)
    p.add_argument("--n-layers", type=int, required=True)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--batch", type=int, required=True, help="sequences per optimizer step")
    p.add_argument("--microbatch", type=int, required=True, help="sequences per forward")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, fp32 master weights")
    p.add_argument("--tf32", action="store_true", help="let fp32 matmuls round through TF32 (as burn's CUDA backend does)")
    p.add_argument("--attention", default="eager", choices=["eager", "sdpa"],
                   help="sdpa: torch's scaled_dot_product_attention in place of transformers' eager MPT attention")
    p.add_argument("--fused-adamw", action="store_true", help="torch's fused AdamW kernel (CUDA)")
    a = p.parse_args()
    if a.batch % a.microbatch != 0:
        print(json.dumps({"skipped": f"batch {a.batch} is not a multiple of microbatch {a.microbatch}"}))
        return 0

    try:
        import torch
        import transformers
        from transformers import MptConfig, MptForCausalLM
    except Exception as e:  # ImportError, or a broken install
        print(json.dumps({"skipped": f"torch/transformers not importable: {e}"}))
        return 0

    torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(a.seed)
    cfg = MptConfig(
        d_model=a.d_model,
        n_heads=a.n_heads,
        n_layers=a.n_layers,
        expansion_ratio=a.expansion,
        max_seq_len=a.seq,
        vocab_size=a.vocab,
        resid_pdrop=0.0,
        emb_pdrop=0.0,
        # An int: transformers 5's strict config rejects the float 0.0 here.
        attn_config={"attn_pdrop": 0, "alibi": True},
        use_cache=False,
    )
    model = MptForCausalLM(cfg)
    if a.attention == "sdpa":
        use_sdpa(transformers.models.mpt.modeling_mpt)
    if a.expansion != 4:
        hidden = a.expansion * a.d_model
        for block in model.transformer.blocks:
            block.ffn.up_proj = torch.nn.Linear(a.d_model, hidden, bias=False)
            block.ffn.down_proj = torch.nn.Linear(hidden, a.d_model, bias=False)
    device = torch.device(a.device)
    model.to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(
        model.parameters(), lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
        **({"fused": True} if a.fused_adamw else {}),
    )

    gen = torch.Generator().manual_seed(a.seed)
    accum = a.batch // a.microbatch

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> float:
        total = 0.0
        for _ in range(accum):
            ids = torch.randint(0, a.vocab, (a.microbatch, a.seq), generator=gen).to(device)
            with autocast:
                out = model(input_ids=ids, labels=ids)
            (out.loss / accum).backward()
            total += float(out.loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total / accum

    try:
        for _ in range(a.warmup):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync()
    except torch.cuda.OutOfMemoryError as e:
        # The bench tries smaller microbatches: say so in the one JSON line, exit 0.
        print(json.dumps({"oom": True, "microbatch": a.microbatch, "error": str(e).splitlines()[0]}))
        return 0
    dt = (time.perf_counter() - t0) / a.steps
    peak = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
    print(
        json.dumps(
            {
                "framework": "pytorch",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "dtype": a.dtype,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "attention": a.attention,
                "fused_adamw": a.fused_adamw,
                "max_memory_reserved_bytes": peak,
                "params": n_params,
                "batch": a.batch,
                "microbatch": a.microbatch,
                "seq": a.seq,
                "steps": a.steps,
                "step_ms": dt * 1e3,
                "tokens_per_s": a.batch * a.seq / dt,
                "notes": "transformers MptForCausalLM: ALiBi, no linear biases",
            }
        )
    )
    return 0


def use_sdpa(mpt) -> None:
    """Replaces transformers' eager MPT attention (scores, softmax, probabilities kept for the
    backward) by `torch.nn.functional.scaled_dot_product_attention` with the ALiBi + causal bias
    as its float mask, as llm-foundry's `torch` attention with SDPA. The bias is built once per
    forward and shared by every layer."""
    import torch
    import torch.nn.functional as F

    cache = {}

    def forward(self, hidden_states, position_bias, past_key_values=None, attention_mask=None, cache_position=None):
        if past_key_values is not None:
            raise NotImplementedError("the SDPA patch is for training (no KV cache)")
        b, s = hidden_states.shape[:2]
        qkv = self.Wqkv(hidden_states)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = (t.reshape(b, s, self.n_heads, self.head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=2))
        key = (position_bias.data_ptr(), attention_mask.data_ptr(), s, q.dtype)
        if key not in cache:
            cache.clear()
            bias = position_bias[:, -s:, -s:].to(q.dtype).unsqueeze(0)  # [1, heads, 1 or s, s]
            cache[key] = bias.masked_fill(attention_mask, float("-inf"))  # [b, heads, s, s]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=cache[key], scale=self.softmax_scale)
        out = out.transpose(1, 2).reshape(b, s, -1)
        return self.out_proj(out), None

    mpt.MptAttention.forward = forward


if __name__ == "__main__":
    sys.exit(main())
