# session 20 call 5 (#3): the nvImageCodec GPU-decoding diagnosis (runs/gpu/s20diag.py), both orders, warnings on.
source runs/gpu/env.sh
python3 -c "import site,sys; print(sys.path)" | cut -c1-400
for order in nv_first torch_first; do
  echo "=== $order"
  NVIMGCODEC_VERBOSITY=2 timeout 90 python3 runs/gpu/s20diag.py $order 2>&1 | grep -v -E "^\s*$" | awk '!seen[$0]++' | cut -c1-400 | head -80
done
