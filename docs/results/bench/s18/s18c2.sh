# session 18 call 2 (#4): the paper's sweep with the Triton 3x3 convs (conv_impl=auto), 8 at a time under MPS,
# command buffers; started in the background, it runs on through call 3 (s18c3.sh, issued within 30 s).
source runs/gpu/env.sh
R=/tmp/sweep_pallas
nohup python3 -c "import sys; from qresnet import cli; sys.exit(cli.main())" sweep --config configs/cifar10/sweep_paper.py \
  --root $R --jobs 8 --mps --command-buffers --config.model.conv_impl=auto > /tmp/sweep_pallas.log 2>&1 &
echo $! > /tmp/sweep_pallas.pid
while [ $(left 580) -gt 3 ] && kill -0 $(cat /tmp/sweep_pallas.pid) 2>/dev/null; do
  sleep 30; echo "t=$(( $(date +%s) - START )) done=$(ls $R/*/result.json 2>/dev/null | wc -l) failed=$(grep -c FAILED /tmp/sweep_pallas.log)"
done
tail -c 1500 /tmp/sweep_pallas.log
