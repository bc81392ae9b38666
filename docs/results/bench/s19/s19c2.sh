# session 19 call 2 (#4): wait for the sweep started by s19c1.sh, then bring back its records (a third call with this
# script if it is still running at the end).
source runs/gpu/env.sh
R=/tmp/sweep19
while [ $(left 570) -gt 25 ] && kill -0 $(cat /tmp/sweep19.pid) 2>/dev/null; do
  sleep 10; echo "t=$(( $(date +%s) - START )) done=$(ls $R/*/result.json 2>/dev/null | wc -l)"
done
tail -c 2500 /tmp/sweep19.log
cp /tmp/sweep19.log $OUT/
tar czf $OUT/sweep19_runs.tgz -C $R --exclude='ckpt' --exclude='tb' --exclude='.jax_cache' .
ls -la $OUT
