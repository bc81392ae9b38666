# session 18 call 1 (#4): the Triton convs' launch settings (conv_kernels.Tuning): row masks (new default) against the
# per-element masks of session 17 (full_masks=1) and the all-taps kernel gradient at widths 2 and 1, then
# block/warp/stage variants at width 2.
source runs/gpu/env.sh
CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,WHILE,CONDITIONAL"
for WT in 2.0: 2.0:full_masks=1 2.0:wgrad_all_taps=1 1.0: 1.0:full_masks=1 1.0:wgrad_all_taps=1 2.0:fwd_block=64 2.0:fwd_block=256,warps=8 2.0:stages=3; do
  W=${WT%%:*}; T=${WT#*:}
  [ $(left 400) -lt 45 ] && break
  XLA_FLAGS="$CB" timeout $(left 400) python3 -m benchmarks.train_step --case resnet20:32:256:bfloat16:$W --libraries qresnet \
    --rows qresnet:w4a4_ends8:qresnet --scan 195 --steps 5 --alone --conv-impl pallas --conv-tuning "$T" --out $OUT/conv_tuning.jsonl 2>&1 | tail -1 | python3 -c "import sys,json
t=sys.stdin.read()
try: r=json.loads(t); print(r.get('step_ms'), r.get('images_per_s'), r.get('error', ''))
except Exception: print(t[-600:])"
  echo "W=$W T=$T rc=${PIPESTATUS[0]} t=$(( $(date +%s) - START ))"
done
