"""What `optimum-cli export qaic --help` costs a user: wall time, side by side with `optimum-cli export --help`
(optimum's own listing, which imports our register file too), median of N runs in fresh processes.

    python benchmarks/cli_startup.py [--runs 7]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time


def wall(argv) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    commands = {
        "optimum-cli export --help": [cli, "export", "--help"],
        "optimum-cli export qaic --help": [cli, "export", "qaic", "--help"],
    }
    times = {name: [] for name in commands}
    for _ in range(args.runs):  # interleaved, so both see the same machine load
        for name, argv in commands.items():
            times[name].append(wall(argv))
    print(f"| command | median s (of {args.runs}) |\n|---|---:|")
    for name, values in times.items():
        print(f"| `{name}` | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
