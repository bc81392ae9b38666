# session 21 call 4 (#5): w8a8_fused with signed 8-bit activations (no shifted codes): float ResNet-20 (200 epochs),
# the fused fine-tune from it, export, equivalence; then bench-int (ResNet-50 first, the must-show; then ResNet-20).
# Carry [".data", ".whl", "runs/gpu"].
source runs/gpu/env.sh
R=/tmp/r4; mkdir -p $R
F=$R/cifar10_jpeg_resnet20_bf16_fold_source; W=$R/cifar10_jpeg_resnet20_w8a8_fused
timeout $(left 300) python3 -m qresnet.cli train --config configs/cifar10/resnet20_bf16.py --workdir $F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-300
echo "float rc=${PIPESTATUS[0]} left=$(left 560)"
timeout $(left 420) python3 -m qresnet.cli train --config configs/cifar10/resnet20_w8a8_fused.py --workdir $W --config.init_from=$F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-300
echo "fused rc=${PIPESTATUS[0]} left=$(left 560)"
timeout $(left 540) python3 -m qresnet.cli export --workdir $W --out $R/w8a8_fused.qrx 2>&1 | tail -1
timeout $(left 540) python3 -m qresnet.cli eval --export $R/w8a8_fused.qrx --compare $W 2>&1 | grep -v WARNING | tail -1 | tee -a $OUT/equivalence_fused.jsonl
tar czf $OUT/runs.tgz -C $R --exclude=ckpt --exclude='events*' --exclude='*.qrx' .
echo "left=$(left 560)"
for C in resnet50:224:256 resnet20:32:1024; do
  timeout $(left 590) python3 -m qresnet.cli bench-int --case $C --iters 20 --out $OUT/speed_${C%%:*}.jsonl 2>&1 | grep -v -E "WARNING|Delay kernel" | tail -2 | cut -c1-900
  echo "bench $C rc=${PIPESTATUS[0]} left=$(left 560)"
done
