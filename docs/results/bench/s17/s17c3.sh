# session 17 call 3 (#4): which convs to give the Triton kernels: pallas_max_channels 32 or 64, against XLA, by width.
source runs/gpu/env.sh
CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,WHILE,CONDITIONAL"
for WI in 2.0:pallas:32 2.0:xla:64 2.0:pallas:64 1.5:pallas:32 1.5:xla:64 1.5:pallas:64 1.0:pallas:32 1.0:xla:64 0.75:pallas:64 0.75:xla:64; do
  IFS=: read W I M <<< "$WI"
  [ $(left 470) -lt 45 ] && break
  XLA_FLAGS="$CB" timeout $(left 470) python3 -m benchmarks.train_step --case resnet20:32:256:bfloat16:$W --libraries qresnet \
    --rows qresnet:w4a4_ends8:qresnet --scan 195 --steps 5 --alone --conv-impl $I --pallas-max-channels $M --out $OUT/train_step_conv_impl.jsonl 2>&1 | tail -1 | python3 -c "import sys,json
t=sys.stdin.read()
try: r=json.loads(t); print(r.get('step_ms'), r.get('images_per_s'), r.get('loss'), r.get('error', ''))
except Exception: print(t[-600:])"
  echo "W=$W impl=$I max=$M rc=${PIPESTATUS[0]} t=$(( $(date +%s) - START ))"
done
