# session 22 call 4 (#5): float ResNet-20 -> w4a4_ends8_fused fine-tune -> export -> equivalence with cuDNN's rounding
# where it fuses (the projections' int8 outputs). Carry [".data", ".whl", "runs/gpu"].
source runs/gpu/env.sh
R=/tmp/r3; F=$R/float; W=$R/w4a4_ends8_fused
timeout $(left 470) python3 -m qresnet.cli train --config configs/cifar10/resnet20_bf16.py --workdir $F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-300
timeout $(left 530) python3 -m qresnet.cli train --config configs/cifar10/resnet20_w4a4_ends8_fused.py --workdir $W --config.init_from=$F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-300
timeout $(left 545) python3 -m qresnet.cli export --workdir $W --out $R/w4a4_ends8_fused.qrx 2>&1 | tail -1
timeout $(left 555) python3 -m qresnet.cli eval --export $R/w4a4_ends8_fused.qrx --compare $W 2>&1 | grep -v "Delay kernel" | tail -2 | tee -a $OUT/equivalence_fused.jsonl
tar czf $OUT/runs.tgz -C $R --exclude=ckpt --exclude='events*' --exclude='*.qrx' .
echo "left=$(left 560)"
