# session 17 call 1 (#4): does an XLA flag make ResNet-20's epoch program faster? (convs are 65% of its GPU time)
# The plain command-buffer program is timed first and last of each width (drift); each in its own process.
source runs/gpu/env.sh
CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,WHILE,CONDITIONAL"
for W in 1.0 2.0 0.75; do
I=0
for F in "" "--xla_gpu_force_conv_nchw=true" "--xla_gpu_experimental_enable_conv_fusion=true" "--xla_gpu_force_conv_nhwc=true" ""; do
  I=$((I+1)); [ $(left 540) -lt 45 ] && break 2
  XLA_FLAGS="$CB $F" timeout $(left 540) python3 -m benchmarks.train_step --case resnet20:32:256:bfloat16:$W --libraries qresnet \
    --rows qresnet:w4a4_ends8:qresnet --scan 195 --steps 5 --alone --out $OUT/s17_flags_$I.jsonl 2>&1 | tail -1 | python3 -c "import sys,json
t=sys.stdin.read()
try: r=json.loads(t); print(r.get('step_ms'), r.get('images_per_s'), r.get('error', ''))
except Exception: print(t[-400:])"
  echo "W=$W F=$F rc=${PIPESTATUS[0]} t=$(( $(date +%s) - START ))"
done; done
