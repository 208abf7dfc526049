"""Start-up time of the commands that run no model: wall time of each, and whether it imported torch.

    python bench/startup.py             # needs a features file for info/verify: makes none itself
    python bench/startup.py feats.h5    # also times `vidfeat info feats.h5` and `vidfeat verify feats.h5`

Each command runs in a fresh interpreter, 3 times; the best time is printed.
"""

from __future__ import annotations

import subprocess
import sys
import time

CODE = """
import atexit, sys
atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr))
from vidfeat.cli import main
main(sys.argv[1:], prog_name='vidfeat')
"""


def time_command(args: list[str], repeat: int = 3) -> tuple[float, bool]:
    best, torch_loaded = float("inf"), False
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
        torch_loaded = "TORCH True" in proc.stderr
    return best, torch_loaded


def main(argv: list[str]) -> int:
    commands = [["--help"], ["extract", "--help"], ["models", "--help"]]
    if argv:
        commands += [["info", argv[0]], ["verify", argv[0]]]
    for args in commands:
        seconds, torch_loaded = time_command(args)
        print(f"vidfeat {' '.join(args):<40} {seconds:6.2f} s  torch imported: {'yes' if torch_loaded else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
