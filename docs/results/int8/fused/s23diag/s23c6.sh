# session 23 call 6 (#5): bench-int ResNet-20 with the channel padding and the last conv's barrier. Carry [".whl", "runs/gpu"].
source runs/gpu/env.sh
timeout $(left 140) python3 -m qresnet.cli bench-int --case resnet20:32:1024 --iters 50 \
  --out $OUT/speed_r20.jsonl 2>&1 | grep -v "Delay kernel" | cut -c1-900
echo "left=$(left 150)"
