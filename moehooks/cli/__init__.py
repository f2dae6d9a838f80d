"""moehooks command line: the routing-distraction study, one command per step (a thin layer over the library).

    python cli.py steer                      # identify -> steer on the embedded lab model, prints the table
    python cli.py steer --model qwen3-vl     # the paper's protocol on its six benchmarks (Table 1)
    python cli.py steer --model qwen3-vl --benchmark math500 --dry-run   # the resolved plan; nothing loaded
    python cli.py steer --model /ckpt/Qwen3-VL --preset qwen3-vl --benchmark mathverse --data-dir data
    python cli.py steer --model qwen3-vl --tasks mathverse.jsonl --general general.jsonl
    python cli.py analyze                    # Gini / JSD of image vs text routing, with plots
    python cli.py swap                       # concept-swap layer sweep on the lab model
    accelerate launch --num_processes 4 cli.py eval items.jsonl --model qwen3-vl   # items split over 4 processes
"""

from moehooks.cli import evaluation, routing
from moehooks.cli.common import app

app.info.help = __doc__
__all__ = ["app", "evaluation", "main", "routing"]


def main() -> None:
    """The ``moehooks`` console command (also ``python cli.py`` and ``python -m moehooks.cli``)."""
    from moehooks import distributed

    try:
        app()
    finally:
        distributed.finish()
