# session 18 call 5 (#4): the Triton convs up to 64 channels against up to 32, widths 1, 1.5 and 2, side by side.
START0=$(date +%s)
source runs/gpu/env.sh
START=$START0
CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,WHILE,CONDITIONAL"
for WM in 1.0:32 1.0:64 2.0:64 1.5:64 1.5:32; do
  W=${WM%%:*}; M=${WM#*:}
  [ $(left 270) -lt 42 ] && break
  XLA_FLAGS="$CB" timeout $(left 270) python3 -m benchmarks.train_step --case resnet20:32:256:bfloat16:$W --libraries qresnet \
    --rows qresnet:w4a4_ends8:qresnet --scan 195 --steps 5 --alone --conv-impl pallas --pallas-max-channels $M --out $OUT/conv_max_channels.jsonl 2>&1 | tail -1 | python3 -c "import sys,json
t=sys.stdin.read()
try: r=json.loads(t); print(r.get('step_ms'), r.get('images_per_s'), r.get('error', ''))
except Exception: print(t[-600:])"
  echo "W=$W max=$M rc=${PIPESTATUS[0]} t=$(( $(date +%s) - START ))"
done
