# session 22 call 3 (#3, #5): repeat call 2's fed rows (OpenCV alone with window decoding, 14 workers: 0.979 as made,
# against session 19's 0.78 before the decoders were made per process in 347c800; 0.989 shrunk to 320), then bench-int
# ResNet-50 again (50 iterations; the second measurement of the fused model). Carry [".whl", ".whl_nv", "runs/gpu"].
source runs/gpu/env.sh
G='^\s*$|leaked|warnings.warn|is_alive|\^\^\^'
F="python3 -m benchmarks.input_pipeline --data /tmp/j.npz --feed resnet50:224:256:bfloat16 --workers 14 --backend opencv --decode window"
for m in 0 320; do
  timeout $(left 330) $F --max-side $m --out $OUT/input_fed_shrunk_repeat.jsonl 2>&1 | grep -v -E "$G" | tail -1 | cut -c1-700
  echo "rc=${PIPESTATUS[0]} left=$(left 560)"
done
timeout $(left 555) python3 -m qresnet.cli bench-int --case resnet50:224:256 --iters 50 --out $OUT/speed_resnet50_iters50.jsonl 2>&1 | tee $OUT/bench.log | grep -v "Delay kernel" | grep -i -E "warn|setting" | cut -c1-300
echo "bench rc=${PIPESTATUS[0]} left=$(left 560)"
