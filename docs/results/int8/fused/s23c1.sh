# session 23 call 1 (#5): bench-int with the fused row's new defaults (w8a8_fused_pow2, the int8 space-to-depth stem
# and the float32 stem beside it), ResNet-50 at 224 / batch 256 and ResNet-20 at 32 / batch 1024 (not re-measured
# since session 21's unfused 0.28x), 50 iterations. Carry [".whl", "runs/gpu"]. Predicted: ResNet-50 as session 22's
# w8a8_fused rows (1.27-1.36x with the int8 stem); ResNet-20 unknown.
source runs/gpu/env.sh
timeout $(left 555) python3 -m qresnet.cli bench-int --case resnet50:224:256 --case resnet20:32:1024 --iters 50 \
  --out $OUT/speed_pow2.jsonl 2>&1 | tee $OUT/bench.log | grep -v "Delay kernel" | grep -i -E "warn|setting" | cut -c1-400
echo "bench rc=${PIPESTATUS[0]} left=$(left 560)"
