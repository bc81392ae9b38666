# session 20 call 3 (#3): could nvImageCodec decode the GPU's share faster than torchvision's nvJPEG? The probe (its pixels
# against the CPU's and torchvision's, decode_batch's images/s, the window decoding in 1 and 2 threads; torchvision's rows
# beside), then ResNet-50 fed with gpu_decoder=nvimgcodec and window decoding on the CPU at shares 0.5 and 0.85.
# Carry [".whl", ".whl_nv", "runs/gpu"] (not .data). Predicted: torchvision ~14,000 images/s alone (session 13); if
# nvImageCodec's hardware path is not bound to one call at a time, well above that with 2 threads, and fed > 0.943.
source runs/gpu/env.sh
G='^\s*$|leaked|warnings.warn|is_alive|\^\^\^'
timeout $(left 200) python3 -m benchmarks.gpu_decode_probe --decoders torchvision,nvimgcodec --out $OUT/gpu_decode_nvimgcodec.jsonl 2>&1 \
  | grep -v -E "$G" | tail -8 | cut -c1-700
echo "rc=${PIPESTATUS[0]} left=$(left 560)"
timeout $(left 555) python3 -m benchmarks.input_pipeline --data /tmp/j.npz --feed resnet50:224:256:bfloat16 --workers 14 --decode window \
  --backend nvjpeg --gpu-decoder nvimgcodec --decode-threads 3 --decode-per-call 2 --cpu-share 0.5,0.85 \
  --out $OUT/input_fed_nvimgcodec.jsonl 2>&1 | grep -v -E "$G" | tail -2 | cut -c1-800
echo "rc=${PIPESTATUS[0]} left=$(left 560)"
