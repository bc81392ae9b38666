# session 19 call 3 (#3): fed ResNet-50 (back-to-back fixed-data measure), 14 workers: nvjpeg 3 threads with 4 batches a
# call at CPU shares 0.6/0.7 (does a call cost its images or a fixed time?); the opencv backend alone; nvjpeg 2 a call at 0.75.
source runs/gpu/env.sh
run() { local t=$1; shift; timeout $t python3 -m benchmarks.input_pipeline --feed resnet50:224:256:bfloat16 --workers 14 --decode draft \
  --data /tmp/j.npz "$@" 2>&1 | grep -v -E "^\s*$|leaked|warnings.warn|is_alive|\^\^\^" | tail -2 | cut -c1-900; echo "rc=${PIPESTATUS[0]} left=$(left 565)"; }
run $(left 330) --backend nvjpeg --decode-threads 3 --decode-per-call 4 --cpu-share 0.6,0.7 --out $OUT/input_fed_per_call4.jsonl
run $(left 450) --backend opencv --out $OUT/input_fed_opencv14.jsonl
run $(left 565) --backend nvjpeg --decode-threads 3 --decode-per-call 2 --cpu-share 0.75 --out $OUT/input_fed_share075.jsonl
