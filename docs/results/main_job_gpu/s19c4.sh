# session 19 call 4 (#4, deliverable 5): the README's main job on a GPU, as a new user runs it (default jobs), into a
# fresh root; then the same command again (finished runs skipped); then 9 at a time under MPS into a second fresh root.
source runs/gpu/env.sh
ls .data
run_sweep() { local root=$1; shift; local t0=$(date +%s.%N)
  timeout $(left 560) python3 -c "import sys; from qresnet import cli; sys.exit(cli.main())" sweep --config configs/fashion_mnist/sweep_small.py --root $root "$@" > /tmp/$(basename $root).log 2>&1
  echo "rc=$? wall=$(python3 -c "print(round($(date +%s.%N)-$t0,1))") root=$root $*"; tail -n 4 /tmp/$(basename $root).log | cut -c1-300; }
run_sweep /tmp/fm_default
run_sweep /tmp/fm_default
run_sweep /tmp/fm_mps --jobs 9 --mps
cp /tmp/fm_default.log /tmp/fm_mps.log $OUT/  # fm_default.log holds the re-run's output (both wrote it); kept as fm_default_rerun.log
cp /tmp/fm_default/sweep_log.jsonl $OUT/fm_default_sweep_log.jsonl; cp /tmp/fm_mps/sweep_log.jsonl $OUT/fm_mps_sweep_log.jsonl
cp /tmp/fm_default/index.csv $OUT/fm_default_index.csv; cp /tmp/fm_default/pareto/report.md $OUT/fm_default_report.md
