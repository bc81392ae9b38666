# Sourced by device-call scripts: wheels onto PYTHONPATH, the repo importable, the CIFAR pack found.
# START is taken before the wheels' installation, so left() counts it against the call's limit
# (session 18: a detached sweep was killed with a call whose script ran past the limit by its install).
START=${START:-$(date +%s)}
left() { echo $(( ${1:-560} - ($(date +%s) - START) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 QRESNET_DATA=$PWD/.data
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "commit ${QRESNET_COMMIT:-unknown} date $(date -u +%F)"
