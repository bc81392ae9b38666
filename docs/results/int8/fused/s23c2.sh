# session 23 call 2 (#5): full-length w8a8_fused_pow2 and w4a4_ends8_fused_pow2 (float 200 epochs, then 30 epochs of
# fine-tuning each with BN folded), export, equivalence on cuDNN's fused path. Carry [".data", ".whl", "runs/gpu"].
# Predicted: both equal to the bit (agreement 1.0, logit error 0); accuracy within a few thousandths of w8a8_fused's.
source runs/gpu/env.sh
R=/tmp/r23; F=$R/float
timeout $(left 300) python3 -m qresnet.cli train --config configs/cifar10/resnet20_bf16.py --workdir $F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-200
for s in w8a8_fused_pow2 w4a4_ends8_fused_pow2; do
  W=$R/$s
  timeout $(left 520) python3 -m qresnet.cli train --config configs/cifar10/resnet20_$s.py --workdir $W --config.init_from=$F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-200
  timeout $(left 540) python3 -m qresnet.cli export --workdir $W --out $R/$s.qrx 2>&1 | tail -1
  timeout $(left 555) python3 -m qresnet.cli eval --export $R/$s.qrx --compare $W 2>&1 | grep -v "Delay kernel" | tail -1 | tee -a $OUT/equivalence_pow2.jsonl | cut -c1-600
  tar czf $OUT/runs.tgz -C $R --exclude=ckpt --exclude='events*' --exclude='*.qrx' .
  echo "left=$(left 560)"
done
