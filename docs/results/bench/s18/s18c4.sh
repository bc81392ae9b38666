# session 18 call 4 (#4): finish the Triton-conv sweep of s18c2.sh (killed at the call's limit after 18/36 runs).
# On a fresh machine the 18 finished runs' records come back from call 3's archive, so only the other 18 run.
source runs/gpu/env.sh
R=/tmp/sweep_pallas
if [ ! -d $R ]; then mkdir -p $R && tar xzf runs/gpu/sweep_pallas_runs.tgz -C $R && echo "restored $(ls $R/*/result.json | wc -l) results"; fi
timeout $(left 530) python3 -c "import sys; from qresnet import cli; sys.exit(cli.main())" sweep --config configs/cifar10/sweep_paper.py \
  --root $R --jobs 8 --mps --command-buffers --config.model.conv_impl=auto > /tmp/sweep_pallas2.log 2>&1
echo "rc=$? t=$(( $(date +%s) - START ))"
tail -c 2500 /tmp/sweep_pallas2.log
cp /tmp/sweep_pallas2.log $OUT/
tar czf $OUT/sweep_pallas_runs2.tgz -C $R --exclude='ckpt' --exclude='tb' --exclude='.jax_cache' .
