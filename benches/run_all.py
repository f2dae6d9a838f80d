"""Run every bench in its own process (``make bench``); extra arguments go to each script.

    python benches/run_all.py                        # full mid-size config, results in benches/results/*.json
    python benches/run_all.py --new-tokens 16 --repeats 3 --out /tmp/bench   # quick look
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# script and its own arguments (command-line arguments come after them and win); the second frameworks run uses
# a narrow model, so that per-step framework costs stand out from the forward's compute
BENCHES = (
    ("overhead.py", "--repeats", "7"),
    ("router_logits.py",),
    ("frameworks.py",),
    ("frameworks.py", "--tag", "small", "--hidden", "128", "--moe-intermediate", "64", "--vocab", "512",
     "--repeats", "15"),
    ("compiled.py",),
)


def main() -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed = []
    for script, *own in BENCHES:
        print(f"== {script} {' '.join(own)}", flush=True)
        code = subprocess.call([sys.executable, str(Path(__file__).parent / script), *own, *sys.argv[1:]], env=env)
        if code:
            failed.append(" ".join([script, *own]))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
