# session 21 call 1 (#3): which nvImageCodec backend decodes the windows (s21diag.py), then fed rows with
# gpu_decoder=nvimgcodec at CPU shares 0.75, 0.7, 0.6 (window decoding on the CPU; torchvision at 0.75: 0.875-0.915, session 19).
# Carry [".whl", ".whl_nv", "runs/gpu"]. Predicted: if the hardware decoder takes the windows with little CPU, a share
# of 0.6-0.75 on it beats 0.85 (the CPU workers are the limit there: 0.85 x 6,875 > the 5,378 images/s 14 workers decode).
source runs/gpu/env.sh
G='^\s*$|leaked|warnings.warn|is_alive|\^\^\^|WARNING'
timeout $(left 120) python3 runs/gpu/s21diag.py 2>&1 | grep -v -E "$G" | tail -8 | cut -c1-300
echo "left=$(left 560)"
timeout $(left 555) python3 -m benchmarks.input_pipeline --data /tmp/j.npz --feed resnet50:224:256:bfloat16 --workers 14 --decode window \
  --backend nvjpeg --gpu-decoder nvimgcodec --decode-threads 3 --decode-per-call 2 --cpu-share 0.75,0.7,0.6 \
  --out $OUT/input_fed_nvimgcodec_shares.jsonl 2>&1 | grep -v -E "$G" | tail -6 | cut -c1-700
echo "rc=${PIPESTATUS[0]} left=$(left 560)"
