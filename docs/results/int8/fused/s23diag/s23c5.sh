# session 23 call 5 (#5): the last conv's generic cuDNN engine (runs/gpu/s23diag3.py). Carry [".whl", "runs/gpu"].
source runs/gpu/env.sh
timeout $(left 200) python3 runs/gpu/s23diag3.py 2>&1 | grep -v "Delay kernel" | cut -c1-900
echo "left=$(left 210)"
