# session 22 call 2 (#3): a shrunk copy of the JPEGs (longer side 320 or 256, q90; `imagenet_input.shrink_jpeg`, FFCV's
# max_resolution idea) so that the 14 CPU workers alone feed ResNet-50 bf16 on an H200 (OpenCV, window decoding)?
# Per-image cost first (one thread, as made and shrunk), then fed rows. Carry [".whl", ".whl_nv", "runs/gpu"].
# Predicted from this CPU (1.85x less per image at 320): > 0.95 of the fixed-data speed at 320 (0.78 as made, session 19).
source runs/gpu/env.sh
G='^\s*$|leaked|warnings.warn|is_alive|\^\^\^'
P="python3 -m benchmarks.input_pipeline --data /tmp/j.npz"
for m in 0 320; do
  timeout $(left 200) $P --per-image 400 --backend opencv --max-side $m --out $OUT/input_per_image_shrunk.jsonl 2>&1 | grep -v -E "$G" | tail -1 | cut -c1-500
done
echo "left=$(left 560)"
F="$P --feed resnet50:224:256:bfloat16 --workers 14 --backend opencv"
for a in "320 window" "256 window" "320 draft" "0 window"; do
  set -- $a
  timeout $(left 555) $F --max-side $1 --decode $2 --out $OUT/input_fed_shrunk.jsonl 2>&1 | grep -v -E "$G" | tail -1 | cut -c1-700
  echo "rc=${PIPESTATUS[0]} left=$(left 560)"
done
