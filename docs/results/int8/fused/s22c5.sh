# session 22 call 5 (#5): does pow2_scale make cuDNN's fused model equal the fake-quant model to the bit on the GPU?
# A short float run (30 epochs: only the equivalence matters here), w8a8_fused_pow2 fine-tuned from it, export,
# eval --compare; then w8a8_fused from the same float run, paired, if time is left. Carry [".data", ".whl", "runs/gpu"].
source runs/gpu/env.sh
R=/tmp/r5; F=$R/float
timeout $(left 100) python3 -m qresnet.cli train --config configs/cifar10/resnet20_bf16.py --workdir $F --config.optim.num_epochs=30 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-200
for s in w8a8_fused_pow2 w8a8_fused; do
  W=$R/$s
  timeout $(left 120) python3 -m qresnet.cli train --config configs/cifar10/resnet20_$s.py --workdir $W --config.init_from=$F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-200
  timeout $(left 150) python3 -m qresnet.cli export --workdir $W --out $R/$s.qrx 2>&1 | tail -1
  timeout $(left 160) python3 -m qresnet.cli eval --export $R/$s.qrx --compare $W 2>&1 | grep -v "Delay kernel" | tail -1 | tee -a $OUT/equivalence_pow2.jsonl | cut -c1-600
  tar czf $OUT/runs.tgz -C $R --exclude=ckpt --exclude='events*' --exclude='*.qrx' .
  echo "left=$(left 165)"
done
