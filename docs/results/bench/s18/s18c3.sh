# session 18 call 3 (#4): wait for the sweep started by s18c2.sh, then bring back its records.
source runs/gpu/env.sh
R=/tmp/sweep_pallas
while [ $(left 540) -gt 3 ] && kill -0 $(cat /tmp/sweep_pallas.pid) 2>/dev/null; do
  sleep 15; echo "t=$(( $(date +%s) - START )) done=$(ls $R/*/result.json 2>/dev/null | wc -l)"
done
tail -c 2500 /tmp/sweep_pallas.log
cp /tmp/sweep_pallas.log $OUT/
tar czf $OUT/sweep_pallas_runs.tgz -C $R --exclude='ckpt' --exclude='tb' --exclude='.jax_cache' .
ls -la $OUT
