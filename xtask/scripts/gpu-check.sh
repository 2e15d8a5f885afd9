#!/usr/bin/env bash
# The prepared GPU check: one run on a lent NVIDIA machine (the `device` tool), which has CUDA but
# no Rust. Build the binary here first, then carry it:
#
#   cargo build --release --features cuda --bin tessera && cargo build --release -p xtask
#   mkdir -p .devrun && for b in tessera xtask; do strip -o /tmp/$b $CARGO_TARGET_DIR/release/$b && gzip -9c /tmp/$b >.devrun/$b.gz; done
#   (on the device, from the repo root, carrying .devrun)
#   for b in tessera xtask; do gunzip -c .devrun/$b.gz >/tmp/$b && chmod +x /tmp/$b; done
#   xtask/scripts/gpu-check.sh /tmp/tessera $OUT /tmp/xtask
#
# It runs, each under its own time limit so one failure does not cost the rest (STEPS="a b" runs
# only the named steps):
#   1. `tessera parity --device cuda`: logits, loss, every gradient and greedy generation against
#      transformers' reference outputs (fixtures/mpt), and transformers itself on the same GPU
#      with TF32 off and on as the yardstick (xtask/python/torch_fixture_parity.py);
#   1b. `tessera kernel-check --device cuda`: the CubeCL kernels (model/src/kernels/cube) against
#      the composed path: flash attention (output and q/k/v gradients, head_dim 64 and 128, causal
#      with ALiBi, GQA and a padded row), LayerNorm, RMSNorm and the cross-entropy, in f32, f16
#      and bf16; fails outside tolerance or if refused;
#   1c. `tessera kernel-check --linear` with TESSERA_CUBLASLT=1 TESSERA_TF32=1: the linear layers
#      through cuBLASLt (model/src/kernels/cuda, never run before) against burn's matmul, output
#      and both gradients, bf16, f16 and TF32, [4096,1024]x[1024,4096] and [77,96]x[96,200];
#   2. `tessera generate --device cuda` on every fixture checkpoint (transformers' greedy tokens),
#      and `tessera quickstart --device cuda`: the whole pipeline, trained on the GPU;
#   3. `tessera bench-step --device cuda`: burn's matmul peak, and fwd+bwd of the mpt-125m shape
#      at seq 2048 and 128, f32 and bf16, and bf16 again with the linear layers through cuBLASLt
#      (bench_step_lt, bench_short_step_lt);
#   4. the same shape in PyTorch + transformers on the same GPU (xtask/python/torch_train_bench.py);
#   5. `tessera train` of a 125m-wide model on the quickstart data, bf16, MFU against the card's peak;
#   6. wgpu (a binary built with `--features cuda,wgpu`): whether the machine offers a Vulkan
#      adapter, then `tessera kernel-check`, `tessera parity --device wgpu` and a short
#      `tessera quickstart --device wgpu`;
#   7. `tessera dist-check --device cuda`: NCCL at world size 1, every collective against the host;
#   8. with an xtask binary (third argument), `cargo xtask bench gpu`: tessera `train` vs PyTorch
#      (transformers' MPT, bf16 autocast, SDPA, fused AdamW) on MPT-125M/350M/1B at seq 2048 with
#      the largest microbatch that fits: tokens/s, MFU against the datasheet peak, peak memory.
#      BENCH_GPU_MODELS=mpt-125m limits it (it takes minutes per model).
# Logs and JSON go to OUTDIR (and OUTDIR/logs.tgz); the last lines printed are a summary.
set -u
BIN=${1:?usage: gpu-check.sh TESSERA_BINARY OUTDIR [XTASK_BINARY]}
OUTDIR=${2:?usage: gpu-check.sh TESSERA_BINARY OUTDIR [XTASK_BINARY]}
XTASK=${3:-}
# No GPU, no check: say so and fail, rather than log a row of failed steps.
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check.sh: no NVIDIA GPU here (nvidia-smi -L failed); run it on a GPU machine" >&2
    exit 2
fi
[ -x "$BIN" ] || { echo "gpu-check.sh: $BIN is not an executable tessera binary" >&2; exit 2; }
[ -z "$XTASK" ] || [ -x "$XTASK" ] || { echo "gpu-check.sh: $XTASK is not an executable xtask binary" >&2; exit 2; }
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUTDIR/gpu.txt"
# The card's name for `tessera train --gpu` (its MFU peak).
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H200*) GPU_NAME=h200 ;;
    *H100*PCIe*) GPU_NAME=h100-pcie ;;
    *H100*) GPU_NAME=h100 ;;
    *A100*) GPU_NAME=a100 ;;
    *) GPU_NAME=h100 ;;
esac
# cubecl compiles its kernels at run time with NVRTC: put the toolkit's copy on the loader path.
nvrtc=$(ldconfig -p | awk '/libnvrtc\.so/ {print $NF; exit}')
[ -n "$nvrtc" ] || nvrtc=$(find /usr/local /opt -name 'libnvrtc.so*' 2>/dev/null | head -1)
echo "nvrtc: ${nvrtc:-not found}" | tee -a "$OUTDIR/gpu.txt"
export LD_LIBRARY_PATH="${nvrtc:+$(dirname "$nvrtc"):}/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
# cudarc opens cuBLASLt as libcublasLt.so (or .so.13, .so.12, ...) and NCCL as libnccl.so (or
# .so.13, .so.12, ...: not the .so.2 NCCL ships). Where no toolkit copy is on the path above,
# PyTorch's wheels have them (site-packages/nvidia/{cublas,nccl}/lib): link them under those
# names in $WORK/lib, which goes last on the loader path so a toolkit copy still wins.
mkdir -p "$WORK/lib"
nvidia_dirs=$(python3 -c 'import importlib.util as u; s = u.find_spec("nvidia"); print("\n".join(s.submodule_search_locations if s else []))' 2>/dev/null)
for d in $nvidia_dirs; do
    for f in "$d"/cublas/lib/libcublasLt.so.* "$d"/nccl/lib/libnccl.so.*; do
        [ -f "$f" ] || continue
        case "$f" in *libcublasLt*) link=libcublasLt.so ;; *) link=libnccl.so ;; esac
        [ -e "$WORK/lib/$link" ] || ln -s "$f" "$WORK/lib/$link"
    done
done
export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$WORK/lib"
echo "linked from the wheels: $(ls -l "$WORK/lib" | awk 'NR > 1 {print $9, $11}' | tr '\n' ' ')" | tee -a "$OUTDIR/gpu.txt"

wanted() { case " ${STEPS:-all} " in *" all "*|*" $1 "*) return 0 ;; *) return 1 ;; esac; }
step() { # step NAME SECONDS COMMAND...: run, log to OUTDIR/NAME.log, record status and time
    local name=$1 limit=$2; shift 2
    wanted "$name" || return 0
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${limit}s-limit $((SECONDS - t0))s" | tee -a "$OUTDIR/status.txt"
}

# Correctness: tessera against transformers' CPU outputs, and transformers itself on this GPU
# with TF32 off and on (the yardstick: burn's CUDA matmuls always round f32 through TF32).
step parity 90 "$BIN" --device cuda parity --fixtures fixtures --json
step torch_parity 60 python3 xtask/python/torch_fixture_parity.py fixtures/mpt --device cuda
step torch_parity_tf32 60 python3 xtask/python/torch_fixture_parity.py fixtures/mpt --device cuda --tf32
# The CubeCL kernels against the composed path (values, gradients; f32, f16, bf16).
step kernel_check 120 "$BIN" --device cuda kernel-check --seq 512
# The linear layers through cuBLASLt (off unless TESSERA_CUBLASLT=1: never run before this
# check) against burn's matmul: y, dx, dw in bf16, f16 and f32 (TF32); fails if refused.
step linear_check 120 env TESSERA_CUBLASLT=1 TESSERA_TF32=1 "$BIN" --device cuda kernel-check --linear
# `tessera generate` on the GPU prints transformers' greedy tokens for every fixture checkpoint.
generate_check() {
    for m in fixtures/mpt/*/; do
        [ -f "$m/prompt_ids.npy" ] || continue
        ids=$(python3 -c 'import numpy, sys; print(",".join(map(str, numpy.load(sys.argv[1]))))' "$m/prompt_ids.npy")
        got=$("$BIN" --device cuda generate --model "$m" --prompt-ids "$ids" --max-new-tokens 24 --json) || return 1
        python3 -c '
import json, sys, numpy
want = [int(x) for x in numpy.load(sys.argv[1])]
got = json.loads(sys.argv[2])["generated_ids"]
print(sys.argv[1], "equal" if got == want else f"DIFFERS: {got} vs {want}")
sys.exit(got != want)' "$m/generated_ids.npy" "$got" || return 1
    done
}
export -f generate_check
export BIN
step generate 90 bash -c generate_check
# The whole pipeline on the GPU.
step quickstart 120 "$BIN" --device cuda quickstart --run-dir "$WORK/qs"
# Throughput: burn's matmul ceiling, then fwd+bwd of the mpt-125m shape at seq 2048 and 128.
step peak 60 "$BIN" --device cuda bench-step --peak-flops --peak-n 8192
LONG=(--d-model 768 --n-layers 12 --n-heads 12 --vocab-size 50368 --seq 2048 --batch 4 --steps 8 --json)
SHORT=(--d-model 768 --n-layers 12 --n-heads 12 --vocab-size 50368 --seq 128 --batch 64 --steps 8 --json)
step bench_f32 60 "$BIN" --device cuda bench-step "${LONG[@]}" --dtype f32
step bench_bf16 60 "$BIN" --device cuda bench-step "${LONG[@]}" --dtype bf16
step bench_short_f32 60 "$BIN" --device cuda bench-step "${SHORT[@]}" --dtype f32
step bench_short_bf16 60 "$BIN" --device cuda bench-step "${SHORT[@]}" --dtype bf16
# The same bf16 rows with the linear layers through cuBLASLt, to read side by side.
step bench_step_lt 60 env TESSERA_CUBLASLT=1 "$BIN" --device cuda bench-step "${LONG[@]}" --dtype bf16
step bench_short_step_lt 60 env TESSERA_CUBLASLT=1 "$BIN" --device cuda bench-step "${SHORT[@]}" --dtype bf16
TORCH=(--d-model 768 --n-layers 12 --n-heads 12 --vocab 50368 --seq 2048 --batch 4 --microbatch 4
       --threads 8 --warmup 2 --steps 8 --device cuda)
step torch_f32 60 python3 xtask/python/torch_train_bench.py "${TORCH[@]}" --dtype fp32
step torch_tf32 60 python3 xtask/python/torch_train_bench.py "${TORCH[@]}" --dtype fp32 --tf32
step torch_bf16 60 python3 xtask/python/torch_train_bench.py "${TORCH[@]}" --dtype bf16
# A real training run (loader, AdamW, clipping, eval) of a 125m-wide model on the quickstart data.
if wanted train_bf16 && [ ! -f "$WORK/qs/quickstart.yaml" ]; then
    STEPS="quickstart_data" step quickstart_data 120 "$BIN" --device cuda quickstart --run-dir "$WORK/qs" --steps 2
fi
step train_bf16 75 "$BIN" --device cuda train "$WORK/qs/quickstart.yaml" --run-dir "$WORK/train" \
    --gpu "$GPU_NAME" --set model.d_model=768 --set model.n_heads=12 --set model.n_layers=12 \
    --set global_train_batch_size=64 --set device_train_microbatch_size=64 \
    --set device_eval_batch_size=64 --set precision=amp_bf16 --set max_duration=30ba \
    --set eval_interval=1000ba --set save_interval=1000ba --set progress_bar=false
# wgpu: the Vulkan loader and drivers this machine has (wgpu needs both), then the same checks.
# A machine without the loader can be lent one: carry Debian's libvulkan1 `libvulkan.so.1` in
# .devrun/vulkan/ (`apt-get download libvulkan1`, then `dpkg-deb -x`).
[ -d .devrun/vulkan ] && export LD_LIBRARY_PATH="$PWD/.devrun/vulkan:$LD_LIBRARY_PATH"
step wgpu_info 20 bash -c 'ldconfig -p | grep -i vulkan; ls -l /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1; true'
# At seq 128: longer calls can pass the loop budget the kernels keep to on wgpu (lavapipe's).
step wgpu_kernel_check 120 "$BIN" --device wgpu kernel-check --seq 128
step wgpu_parity 150 "$BIN" --device wgpu parity --fixtures fixtures --json
step wgpu_quickstart 180 "$BIN" --device wgpu quickstart --run-dir "$WORK/qs_wgpu" --steps 60
# NCCL on this GPU at world size 1 (needs libnccl; tessera built with `--features cuda`).
step dist_check 120 "$BIN" --device cuda dist-check
# The throughput comparison. xtask finds the repo through CARGO_MANIFEST_DIR and keeps its
# scratch files under CARGO_TARGET_DIR.
if [ -n "$XTASK" ]; then
    step bench_gpu 1800 env CARGO_MANIFEST_DIR="$PWD/xtask" CARGO_TARGET_DIR="$WORK/xtask-target" \
        "$XTASK" bench gpu --tessera "$BIN" --out "$OUTDIR/bench-gpu" \
        --models "${BENCH_GPU_MODELS:-mpt-125m,mpt-350m,mpt-1b}"
elif wanted bench_gpu; then
    echo "bench_gpu skipped: no xtask binary given (third argument)" | tee -a "$OUTDIR/status.txt"
fi
for f in train/metrics.jsonl:train_metrics.jsonl qs/run/metrics.jsonl:quickstart_metrics.jsonl \
    qs_wgpu/run/metrics.jsonl:wgpu_quickstart_metrics.jsonl; do
    [ -f "$WORK/${f%%:*}" ] && cp "$WORK/${f%%:*}" "$OUTDIR/${f##*:}"
done

echo "== summary =="
cat "$OUTDIR/status.txt"
for f in parity torch_parity torch_parity_tf32 kernel_check linear_check generate; do cat "$OUTDIR/$f.log" 2>/dev/null; done
tail -n 3 "$OUTDIR/quickstart.log" 2>/dev/null
for f in peak bench_f32 bench_bf16 bench_short_f32 bench_short_bf16 bench_step_lt bench_short_step_lt \
    torch_f32 torch_tf32 torch_bf16; do
    tail -n 1 "$OUTDIR/$f.log" 2>/dev/null
done
tail -n 2 "$OUTDIR/train_bf16.log" 2>/dev/null
tail -n 3 "$OUTDIR/train_metrics.jsonl" 2>/dev/null
for f in wgpu_info wgpu_kernel_check wgpu_parity; do tail -n 12 "$OUTDIR/$f.log" 2>/dev/null; done
tail -n 4 "$OUTDIR/wgpu_quickstart.log" 2>/dev/null
tail -n 20 "$OUTDIR/dist_check.log" 2>/dev/null
cat "$OUTDIR/bench-gpu/report.md" 2>/dev/null || tail -n 20 "$OUTDIR/bench_gpu.log" 2>/dev/null
# At most 8 files come back from the device tool: bundle the logs.
tar -C "$OUTDIR" -czf "$OUTDIR/logs.tgz" --exclude logs.tgz . 2>/dev/null
# Exit status: 0 only if every step that ran passed (and at least one ran).
[ -s "$OUTDIR/status.txt" ] && ! grep -q " rc=[1-9]\| skipped:" "$OUTDIR/status.txt"
