"""Make the run directory of ansible/check.yml's tiny swarm: python check_run.py FOLDER MODEL_PATH EXPERTS.

Writes FOLDER/check-swarm.toml (a one-round debate of EXPERTS experts on MODEL_PATH) and a run directory for it
under FOLDER/runs with swarm_hpc.core.rundir.new_run_dir; prints the run directory. The job then runs
`srun --mpi=pmix <venv>/bin/python -m swarm_hpc.mpi.rank RUN_DIR`.
"""

import json
import sys
from pathlib import Path

from swarm_hpc.core.rundir import new_run_dir
from swarm_hpc.core.spec import load_spec

folder, model, experts = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
lines = [
    'task = "Name one thing a cluster of small computers is good for."',
    'strategy = "debate"',
    "rounds = 1",
    "round_timeout = 120",
    "",
    "[defaults]",
    "n_ctx = 512",
    "max_tokens = 16",
    "temperature = 0.0",
    "threads = 1",
    'chat_format = "plain"',
]
for k in range(1, experts + 1):
    lines += ["", "[[experts]]", f'name = "expert{k}"', f"model = {json.dumps(model)}",
              f'persona = "You are expert number {k}. Answer in one short sentence."']
spec_path = folder / "check-swarm.toml"
spec_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
print(new_run_dir(load_spec(spec_path), spec_path, folder / "runs"))
