# session 21 call 3 (#5): a float ResNet-20 (200 epochs), then both fused settings fine-tuned from it (30 epochs,
# concurrently), exported, and compared with their fake-quant models on the cifar10_jpeg test set.
# Carry [".data", ".whl", "runs/gpu"].
source runs/gpu/env.sh
R=/tmp/r; mkdir -p $R
timeout $(left 330) python3 -m qresnet.cli train --config configs/cifar10/resnet20_bf16.py --workdir $R/cifar10_jpeg_resnet20_bf16_fold_source 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -3 | cut -c1-300
echo "float rc=${PIPESTATUS[0]} left=$(left 560)"
for S in w8a8 w4a4_ends8; do
  rm -rf $R/cifar10_jpeg_resnet20_${S}_fused
  (timeout $(left 480) python3 -m qresnet.cli train --config configs/cifar10/resnet20_${S}_fused.py --workdir $R/cifar10_jpeg_resnet20_${S}_fused \
     --config.init_from=$R/cifar10_jpeg_resnet20_bf16_fold_source > $R/${S}.log 2>&1; echo "$S rc=$?" >> $R/${S}.log) &
done
wait
for S in w8a8 w4a4_ends8; do tr '\r' '\n' < $R/${S}.log | grep -v -E '^\s*$' | tail -2 | cut -c1-300; done
echo "left=$(left 560)"
for S in w8a8 w4a4_ends8; do
  W=$R/cifar10_jpeg_resnet20_${S}_fused
  timeout $(left 550) python3 -m qresnet.cli export --workdir $W --out $R/${S}_fused.qrx 2>&1 | tail -2
  timeout $(left 550) python3 -m qresnet.cli eval --export $R/${S}_fused.qrx --compare $W 2>&1 | grep -v WARNING | tail -2 | tee -a $OUT/equivalence_fused.jsonl
done
tar czf $OUT/runs.tgz -C $R --exclude=ckpt --exclude='events*' --exclude='*.qrx' .
echo "left=$(left 560)"
