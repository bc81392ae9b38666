# session 21 call 2 (#5): the fused int8 bound (benchmarks.int8_fused_probe), ResNet-50 224 batch 256, twice (run-to-run spread).
source runs/gpu/env.sh
G='^\s*$|WARNING|warnings.warn'
for i in 1 2; do
timeout $(left 560) python3 -m benchmarks.int8_fused_probe --iters 20 --out $OUT/int8_fused_probe.jsonl 2>&1 | grep -v -E "$G" | tail -7 | cut -c1-900
echo "rc=${PIPESTATUS[0]} left=$(left 560)"
done
