# session 17 call 2 (#4): Triton 3x3 convs (qresnet/conv_kernels.py) against cuDNN's, per conv and in the epoch program.
source runs/gpu/env.sh
timeout 150 python3 -m benchmarks.conv3x3 --iters 30 --out $OUT/conv3x3.jsonl 2>&1 | python3 -c "import sys,json
for t in sys.stdin:
  try: r=json.loads(t); print(r['shape'], 'fwd %.4f/%.4f grad %.4f/%.4f' % (r['xla_fwd_ms'], r['pallas_fwd_ms'], r['xla_grad_ms'], r['pallas_grad_ms']), 'x%.2f x%.2f' % (r['fwd_speedup'], r['grad_speedup']), 'err %.1e %.1e %.1e' % (r['rel_err_y'], r['rel_err_dx'], r['rel_err_dw']))
  except Exception: print(t.rstrip()[-300:])"
echo "conv3x3 rc=${PIPESTATUS[0]} t=$(( $(date +%s) - START ))"
CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,WHILE,CONDITIONAL"
for W in 1.0 2.0 0.5; do for I in pallas xla; do
  [ $(left 560) -lt 45 ] && break 2
  XLA_FLAGS="$CB" timeout $(left 560) python3 -m benchmarks.train_step --case resnet20:32:256:bfloat16:$W --libraries qresnet \
    --rows qresnet:w4a4_ends8:qresnet --scan 195 --steps 5 --alone --conv-impl $I --out $OUT/train_step_conv_impl.jsonl 2>&1 | tail -1 | python3 -c "import sys,json
t=sys.stdin.read()
try: r=json.loads(t); print(r.get('step_ms'), r.get('images_per_s'), r.get('loss'), r.get('error', ''))
except Exception: print(t[-600:])"
  echo "W=$W impl=$I rc=${PIPESTATUS[0]} t=$(( $(date +%s) - START ))"
done; done
