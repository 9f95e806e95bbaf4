#!/usr/bin/env bash
# One image per blade of a cluster file, from one base image:
#
#   images/customize-all.sh BASE_IMAGE CLUSTER_FILE OUT_DIR [extra options for `swarm-hpc image customize`]
#
# writes OUT_DIR/<blade>.img for every [[blades]] entry (see images/README.md). Needs swarm-hpc (the repo's
# .venv is used when it exists) and mtools; no root, no mounts.
set -euo pipefail
if (($# < 3)); then
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
base=$1 cluster=$2 out=$3
shift 3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
swarm=swarm-hpc
python=python3
if [[ -x $here/../.venv/bin/swarm-hpc ]]; then
    swarm=$here/../.venv/bin/swarm-hpc
    python=$here/../.venv/bin/python
fi
# The blade names, from the checked cluster file (a bad file stops here with one line saying why).
blades=$("$python" -c 'import sys
from pathlib import Path
from swarm_hpc.ops.cluster import load_cluster
from swarm_hpc.errors import UserError
try:
    print(" ".join(b.name for b in load_cluster(Path(sys.argv[1])).blades))
except UserError as e:
    sys.exit(f"swarm-hpc: error: {e}")' "$cluster")
mkdir -p "$out"
for blade in $blades; do
    "$swarm" image customize "$base" --blade "$blade" --cluster "$cluster" -o "$out/$blade.img" "$@"
done
