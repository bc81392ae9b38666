# session 20 call 1 (#4): the paper's sweep with the defaults (model.conv_impl=auto: the narrow convs on Triton), 8 at
# a time under MPS, command buffers, into a fresh root, after the decoded-dataset cache is built (as the 992-s sweep
# had it). Detached (setsid) to run on through call 2 (s20c2.sh, issued within 30 s); this call ends by itself first.
# It returns after UNTIL (default 400) s, so a machine lost between the calls costs 400 s, not 600; call 2 (<= 570 s)
# then covers the rest of a <= 900-s sweep. (Session 19 lost its sweep so; the .data carry must stay < 64 MiB with the tree.)
source runs/gpu/env.sh
R=/tmp/sweep20
python3 -c "import time; from qresnet import data; t=time.time(); data.read_cifar10_jpeg(''); print(f'dataset cache {time.time()-t:.1f} s')"
ls -la .data
setsid nohup python3 -c "import sys; from qresnet import cli; sys.exit(cli.main())" sweep --config configs/cifar10/sweep_paper.py \
  --root $R --jobs 8 --mps --command-buffers > /tmp/sweep20.log 2>&1 < /dev/null &
echo $! > /tmp/sweep20.pid
while [ $(left ${UNTIL:-400}) -gt 0 ] && kill -0 $(cat /tmp/sweep20.pid) 2>/dev/null; do
  sleep 15; echo "t=$(( $(date +%s) - START )) done=$(ls $R/*/result.json 2>/dev/null | wc -l) failed=$(grep -c FAILED /tmp/sweep20.log)"
done
tail -c 600 /tmp/sweep20.log
