"""STAND-IN for the QAIC compiler ``qaic-compile`` (test-only; not the SDK's compiler, which is proprietary and
cannot be installed on our machines).

It checks what the real compiler reads (the model, the specializations, the custom IO list, any partition or
precision file named by an option), prints progress lines as it goes, and writes into ``-aic-binary-dir``:
``programqpc.bin`` (placeholder bytes) and ``standin/``, what the stand-in ``qaicrt`` needs to "run" the program:
a copy of the ONNX graph (with its external data), the specializations, the KV precisions and the device count.
It compiles nothing.

Test hooks (environment): ``STANDIN_LOG`` appends {"argv", "cwd", "pid"} per call; ``STANDIN_FAIL`` exits 3 with
a compiler-like error; ``STANDIN_WAIT_FOR=PATH`` prints "waiting" and blocks until PATH exists (so a test can
act while the compiler runs).
"""

import json
import os
import shutil
import sys
import time

REQUIRED = ("-m", "-network-specialization-config", "-custom-IO-list-file", "-aic-binary-dir")
FILE_OPTIONS = ("-mdp-load-partition-config", "-node-precision-info")


def say(message: str) -> None:
    print(f"stand-in qaic-compile: {message}", flush=True)


def read_custom_io(path: str) -> dict:
    import yaml

    with open(path) as f:
        entries = yaml.safe_load(f) or []
    return {e["IOName"]: e["Precision"] for e in entries}


def external_files(model_path: str):
    """Relative locations of the external data a graph references."""
    import onnx

    model = onnx.load(model_path, load_external_data=False)
    found = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found.add(next(e.value for e in tensor.external_data if e.key == "location"))
    return sorted(found)


def copy_graph(model_path: str, target_dir: str) -> None:
    os.makedirs(target_dir)
    shutil.copy(model_path, os.path.join(target_dir, "model.onnx"))
    for location in external_files(model_path):
        if os.path.isabs(location) or location.startswith(".."):
            raise SystemExit(f"stand-in qaic-compile: external data {location} outside the model directory")
        os.makedirs(os.path.dirname(os.path.join(target_dir, location)), exist_ok=True)
        shutil.copy(os.path.join(os.path.dirname(model_path), location), os.path.join(target_dir, location))


def num_devices(args: dict) -> int:
    if "-mdp-load-partition-config" not in args:
        return 1
    with open(args["-mdp-load-partition-config"]) as f:
        config = json.load(f)
    return sum(len(p["devices"]) for p in config["partitions"])


def main(argv) -> int:
    if os.environ.get("STANDIN_LOG"):
        with open(os.environ["STANDIN_LOG"], "a") as f:
            f.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "pid": os.getpid()}) + "\n")
    args = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    for key in REQUIRED:
        if key not in args:
            print(f"error: missing {key}", file=sys.stderr)
            return 2
    for key in REQUIRED[:-1] + FILE_OPTIONS:
        if key in args and not os.path.isfile(args[key]):
            print(f"error: {key}: no such file {args[key]}", file=sys.stderr)
            return 2
    with open(args["-network-specialization-config"]) as f:
        specializations = json.load(f)["specializations"]
    say(f"reading {args['-m']} ({len(specializations)} specialization(s))")
    if os.environ.get("STANDIN_WAIT_FOR"):
        say("waiting")
        deadline = time.monotonic() + 120
        while not os.path.exists(os.environ["STANDIN_WAIT_FOR"]):
            if time.monotonic() > deadline:
                print("error: stand-in timed out waiting", file=sys.stderr)
                return 4
            time.sleep(0.05)
    if os.environ.get("STANDIN_FAIL"):
        print("error: unsupported operator CtxFrobnicate in graph", file=sys.stderr)
        return 3
    out = args["-aic-binary-dir"]
    os.makedirs(out, exist_ok=True)
    copy_graph(args["-m"], os.path.join(out, "standin"))
    program = {
        "specializations": specializations,
        "custom_io": read_custom_io(args["-custom-IO-list-file"]),
        "num_devices": num_devices(args),
        "argv": argv,
    }
    with open(os.path.join(out, "standin", "program.json"), "w") as f:
        json.dump(program, f, indent=1)
    with open(os.path.join(out, "programqpc.bin"), "wb") as f:
        f.write(b"stand-in qpc")
    say(f"wrote {out}/programqpc.bin")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
