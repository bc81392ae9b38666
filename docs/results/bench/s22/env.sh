# Sourced by device-call scripts: wheels onto PYTHONPATH, the repo importable, the CIFAR pack found.
# START is taken before the wheels' installation, so left() counts it against the call's limit
# (session 18: a detached sweep was killed with a call whose script ran past the limit by its install).
START=${START:-$(date +%s)}
left() { echo $(( ${1:-560} - ($(date +%s) - START) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# .whl_nv (nvImageCodec for CUDA 13 and nvJPEG; 29 MB) travels only with the calls that name it in carry: with the
# CIFAR pack the tree would pass the 64-MiB carry limit.
if [ -d .whl_nv ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl_nv/*.whl || exit 1; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 QRESNET_DATA=$PWD/.data
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "commit ${QRESNET_COMMIT:-unknown} date $(date -u +%F)"
