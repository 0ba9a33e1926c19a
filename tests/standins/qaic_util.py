"""STAND-IN for the QAIC platform SDK's ``qaic-util -q`` (test-only; not the SDK): prints one record per device
in the layout QEfficient parses (``QID n``, ``Status:Ready``, ``Nsp Total:16``, ``FW IMAGE_VARIANT:...``).
``STANDIN_QAIC_DEVICES`` (default 4) devices; ``STANDIN_HW_VARIANT`` (default AIC100) is the firmware variant.
Every call is appended to ``$STANDIN_LOG`` when set."""

import json
import os
import sys


def main(argv) -> int:
    if os.environ.get("STANDIN_LOG"):
        with open(os.environ["STANDIN_LOG"], "a") as f:
            f.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "pid": os.getpid()}) + "\n")
    if "-q" not in argv[1:]:
        print("usage: qaic-util -q", file=sys.stderr)
        return 2
    variant = os.environ.get("STANDIN_HW_VARIANT", "AIC100")
    for qid in range(int(os.environ.get("STANDIN_QAIC_DEVICES", "4"))):
        print(
            f"QID {qid}\n\tStatus:Ready\n\tNsp Total:16\n\tFW IMAGE_VARIANT:{variant}_STANDIN\n"
            "\tBoard serial:STANDIN0\n\tDevice Capabilities\n\t\tHybridBoot+\n\t\tMDP+"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
