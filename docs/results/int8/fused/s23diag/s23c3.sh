# session 23 call 3 (#5): diagnosis of the fused ResNet-20's 0.28x (runs/gpu/s23diag.py). Carry [".whl", "runs/gpu"].
source runs/gpu/env.sh
timeout $(left 330) python3 runs/gpu/s23diag.py default 2>&1 | grep -v "Delay kernel" | cut -c1-1500
XLA_FLAGS=--xla_gpu_enable_cudnn_int8x32_convolution_reordering=false timeout $(left 450) python3 runs/gpu/s23diag.py noreorder 2>&1 | grep -v "Delay kernel" | cut -c1-600
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout $(left 555) python3 runs/gpu/s23diag.py noautotune 2>&1 | grep -v "Delay kernel" | cut -c1-600
echo "left=$(left 560)"
