# session 23 call 4 (#5): device profile of the fused ResNet-20 with and without channel padding, and variants
# (runs/gpu/s23diag2.py); then bench-int ResNet-20 with the padding (FusedResNet channel_multiple "auto"; ResNet-50's
# program is unchanged: its channels are multiples of 64). Carry [".whl", "runs/gpu"]. Fits a 420-s limit.
source runs/gpu/env.sh
timeout $(left 260) python3 runs/gpu/s23diag2.py 2>&1 | grep -v "Delay kernel" | cut -c1-700
timeout $(left 400) python3 -m qresnet.cli bench-int --case resnet20:32:1024 --iters 50 \
  --out $OUT/speed_pad.jsonl 2>&1 | grep -v "Delay kernel" | cut -c1-900
echo "left=$(left 410)"
