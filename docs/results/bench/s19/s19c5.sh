# session 19 call 5 (#3): window decoding (dataset.jpeg_window, nvImageCodec on the CPU) on the host of one H200: per image,
# then fed ResNet-50 (back-to-back measure), nvjpeg 3 threads x 2 batches a call at CPU shares 0.75 and 0.85, then OpenCV
# alone, 14 workers. Predicted: window ~1.2x per image; OpenCV alone 0.59 -> ~0.70; a 0.75 share 0.915 -> 0.93-0.96.
source runs/gpu/env.sh
python3 -c "from qresnet import imagenet_input as ii; ii.check_window(); print('window decoder ok')" || exit 1
B="python3 -m benchmarks.input_pipeline --data /tmp/j.npz"
G='^\s*$|leaked|warnings.warn|is_alive|\^\^\^'
timeout 90 $B --per-image 400 --backend opencv --out $OUT/input_per_image_window.jsonl 2>&1 | grep -v -E "$G" | tail -1 | cut -c1-400
echo "left=$(left 320)"
timeout $(left 230) $B --feed resnet50:224:256:bfloat16 --workers 14 --decode window --backend nvjpeg --decode-threads 3 \
  --decode-per-call 2 --cpu-share 0.75,0.85 --out $OUT/input_fed_window.jsonl 2>&1 | grep -v -E "$G" | tail -2 | cut -c1-700
echo "rc=${PIPESTATUS[0]} left=$(left 320)"
[ $(left 320) -gt 95 ] && timeout $(left 315) $B --feed resnet50:224:256:bfloat16 --workers 14 --decode window --backend opencv \
  --out $OUT/input_fed_window_opencv14.jsonl 2>&1 | grep -v -E "$G" | tail -1 | cut -c1-500
echo "rc=${PIPESTATUS[0]} left=$(left 320)"
