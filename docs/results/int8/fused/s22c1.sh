# session 22 call 1 (#5): the fused model after the idiom fix (session 21: an int8 max/min after each conv's convert
# kept XLA from fusing; inferred). bench-int ResNet-50 first (the must-show; prints compile_forward's warning if
# any conv stays unfused), then float ResNet-20 -> w8a8_fused fine-tune -> export -> equivalence on the cuDNN path.
# Carry [".data", ".whl", "runs/gpu"].
source runs/gpu/env.sh
timeout $(left 300) python3 -m qresnet.cli bench-int --case resnet50:224:256 --iters 20 --out $OUT/speed_resnet50.jsonl 2>&1 | tee $OUT/bench.log | grep -v "Delay kernel" | grep -i -E "warn|fused|setting|rounding" | cut -c1-900
echo "bench rc=${PIPESTATUS[0]} left=$(left 560)"
R=/tmp/r; F=$R/float; W=$R/w8a8_fused
timeout $(left 470) python3 -m qresnet.cli train --config configs/cifar10/resnet20_bf16.py --workdir $F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-300
timeout $(left 530) python3 -m qresnet.cli train --config configs/cifar10/resnet20_w8a8_fused.py --workdir $W --config.init_from=$F 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tail -1 | cut -c1-300
timeout $(left 550) python3 -m qresnet.cli export --workdir $W --out $R/w8a8_fused.qrx 2>&1 | tail -1
timeout $(left 555) python3 -m qresnet.cli eval --export $R/w8a8_fused.qrx --compare $W 2>&1 | grep -v "Delay kernel" | tail -2 | tee -a $OUT/equivalence_fused.jsonl
tar czf $OUT/runs.tgz -C $R --exclude=ckpt --exclude='events*' --exclude='*.qrx' .
echo "left=$(left 560)"
