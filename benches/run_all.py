"""Run every bench in its own process (``make bench``); extra arguments go to each script.

    python benches/run_all.py                        # full mid-size config, results in benches/results/*.json
    python benches/run_all.py --new-tokens 16 --repeats 3 --out /tmp/bench   # quick look
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHES = ("overhead.py", "router_logits.py", "frameworks.py", "compiled.py")


def main() -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed = []
    for script in BENCHES:
        print(f"== {script}", flush=True)
        code = subprocess.call([sys.executable, str(Path(__file__).parent / script), *sys.argv[1:]], env=env)
        if code:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
