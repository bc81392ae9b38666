# session 20 call 2 (#4): wait for the sweep started by s20c1.sh, then bring back its records (a third call with this
# script if it is still running at the end).
source runs/gpu/env.sh
R=/tmp/sweep20
while [ $(left 570) -gt 25 ] && kill -0 $(cat /tmp/sweep20.pid) 2>/dev/null; do
  sleep 10; echo "t=$(( $(date +%s) - START )) done=$(ls $R/*/result.json 2>/dev/null | wc -l)"
done
tail -c 2500 /tmp/sweep20.log
cp /tmp/sweep20.log $OUT/
tar czf $OUT/sweep20_runs.tgz -C $R --exclude='ckpt' --exclude='tb' --exclude='.jax_cache' .
ls -la $OUT
