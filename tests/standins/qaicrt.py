"""STAND-IN for the QAIC platform SDK's Python runtime ``qaicrt`` (test-only code; not the SDK, which is
proprietary and cannot be installed on our machines; no Cloud AI 100 card has run our programs).

It implements exactly the API surface QEfficient's ``QAICInferenceSession`` uses: ``QIDList``, ``Context``
(+ ``setLogLevel``), ``Queue``, ``Qpc.getIoDescriptor``, ``QAicProgramProperties`` (``dataPathTimeoutMs``,
``devMapping``), ``Program`` (``load``/``activate``/``deactivate``), ``ExecObj`` (``setData``/``getData``/
``waitForCompletion``), ``QBuffer``, ``BufferDimensionsVecRef``, ``QStatus``, ``QLogLevel``.

What it models, over the files the stand-in compiler leaves in ``qpc/standin/``:
- the I/O descriptor: bindings from the ONNX graph's inputs and outputs, KV bindings in their custom-IO
  precision (float16; mxint8 travels as float16 on the host side, an assumption), dims of the first
  specialization, and ``allowed_shapes`` when there are several;
- execution: onnxruntime runs the ONNX graph. A binding given an empty buffer is skipped: a skipped ``past_*``
  input reads the program's retained state ("device memory", zero after load), every ``*_RetainedState`` output
  updates it, and only outputs with a host buffer come back. The specialization is chosen by the shapes of the
  bound buffers (and, when skipped KV leaves that ambiguous, by the shape of the retained state);
- transfers: ``traffic`` counts the bytes of every bound input (host -> device) and output (device -> host);
- devices: ``STANDIN_QAIC_DEVICES`` (default 4) cards; a program compiled for N devices must be loaded on N
  (``devMapping``); ``active`` maps each device to the programs active on it.
What it does not model: the card's arithmetic (the graph runs in float32; only what crosses to the host is
converted to the binding's type), timing, timeouts, memory limits, the real descriptor's protobuf format.
"""

import json
import os
import sys

import numpy as np
import QAicApi_pb2 as aicapi

DEVICES = int(os.environ.get("STANDIN_QAIC_DEVICES", "4"))
traffic = {"to_device": 0, "from_device": 0, "executions": 0}
active = {}  # device id -> [qpc dirs of the programs active on it]

_NP = {
    aicapi.FLOAT_TYPE: np.float32,
    aicapi.FLOAT_16_TYPE: np.float16,
    aicapi.BFLOAT16_TYPE: np.float16,
    aicapi.INT8_Q_TYPE: np.int8,
    aicapi.UINT8_Q_TYPE: np.uint8,
    aicapi.INT16_Q_TYPE: np.int16,
    aicapi.INT32_Q_TYPE: np.int32,
    aicapi.INT32_I_TYPE: np.int32,
    aicapi.INT64_I_TYPE: np.int64,
    aicapi.INT8_TYPE: np.int8,
}
_PRECISION = {
    "float16": aicapi.FLOAT_16_TYPE,
    "mxint8": aicapi.FLOAT_16_TYPE,
    "float": aicapi.FLOAT_TYPE,
    "bfloat16": aicapi.BFLOAT16_TYPE,
}


def reset_traffic() -> None:
    traffic.update(to_device=0, from_device=0, executions=0)


class QStatus:
    QS_SUCCESS = 0
    QS_ERROR = 1
    QS_INVAL = 2


class QLogLevel:
    QL_DEBUG = 0
    QL_INFO = 1
    QL_WARN = 2
    QL_ERROR = 3


def _fail(message: str) -> int:
    print(f"stand-in qaicrt: {message}", file=sys.stderr)
    return QStatus.QS_ERROR


class QIDList(list):
    pass


class Context:
    def __init__(self, devices=None):
        self.devices = list(devices) if devices is not None else list(range(DEVICES))
        self.log_level = QLogLevel.QL_WARN

    def setLogLevel(self, level) -> int:
        self.log_level = level
        return QStatus.QS_SUCCESS


class Queue:
    def __init__(self, context: Context, device: int):
        if device not in context.devices:
            raise RuntimeError(f"stand-in qaicrt: queue on device {device} outside the context {context.devices}")
        self.device = device

    def enqueue(self, exec_obj: "ExecObj") -> int:
        exec_obj.status = exec_obj.execute()
        return QStatus.QS_SUCCESS


class QBuffer:
    def __init__(self, data: bytes = b""):
        self.data = bytes(data)

    @property
    def size(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return self.data


class BufferDimensionsVecRef(list):
    """[(element size, dims)] per binding."""


class QAicProgramProperties:
    def __init__(self):
        self.dataPathTimeoutMs = 0
        self.devMapping = ""


def _onnx_type(elem_type: int) -> int:
    import onnx

    t = onnx.TensorProto
    return {
        t.FLOAT: aicapi.FLOAT_TYPE,
        t.FLOAT16: aicapi.FLOAT_16_TYPE,
        t.BFLOAT16: aicapi.BFLOAT16_TYPE,
        t.INT64: aicapi.INT64_I_TYPE,
        t.INT32: aicapi.INT32_I_TYPE,
        t.INT16: aicapi.INT16_Q_TYPE,
        t.INT8: aicapi.INT8_Q_TYPE,
        t.UINT8: aicapi.UINT8_Q_TYPE,
        t.BOOL: aicapi.INT8_TYPE,
    }[elem_type]


def _dims(value_info, spec: dict, known: dict) -> list:
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.dim_param in spec:
            out.append(int(spec[d.dim_param]))
        elif value_info.name.endswith("_RetainedState") and value_info.name[:-14] in known:
            return list(known[value_info.name[:-14]])
        else:
            raise RuntimeError(f"stand-in qaicrt: dim {d.dim_param!r} of {value_info.name} is not specialized")
    return out


class Qpc:
    def __init__(self, path: str):
        import onnx

        self.path = str(path)
        with open(os.path.join(self.path, "standin", "program.json")) as f:
            self.program = json.load(f)
        self.model_path = os.path.join(self.path, "standin", "model.onnx")
        graph = onnx.load(self.model_path, load_external_data=False).graph
        custom_io = self.program["custom_io"]
        values = [(v, aicapi.BUFFER_IO_TYPE_INPUT) for v in graph.input]
        values += [(v, aicapi.BUFFER_IO_TYPE_OUTPUT) for v in graph.output]
        self.shapes = []  # per specialization: [dims per binding]
        for spec in self.program["specializations"]:
            known = {}
            for v, _ in values:
                known[v.name] = _dims(v, spec, known)
            self.shapes.append([known[v.name] for v, _ in values])
        self.bindings = []
        for index, (v, direction) in enumerate(values):
            kind = _PRECISION[custom_io[v.name]] if v.name in custom_io else _onnx_type(v.type.tensor_type.elem_type)
            dims = self.shapes[0][index]
            self.bindings.append(
                {
                    "name": v.name,
                    "index": index,
                    "dir": direction,
                    "type": kind,
                    "dims": dims,
                    "size": int(np.prod(dims)) * np.dtype(_NP[kind]).itemsize,
                    "is_partial_buf_allowed": v.name.startswith("past_"),
                }
            )

    def getIoDescriptor(self):
        allowed = []
        if len(self.shapes) > 1:
            allowed = [
                [{"type": b["type"], "dims": dims} for b, dims in zip(self.bindings, shape)] for shape in self.shapes
            ]
        return QStatus.QS_SUCCESS, aicapi.IoDesc.serialize(self.bindings, allowed)


class Program:
    def __init__(self, context: Context, device, qpc: Qpc, properties: QAicProgramProperties):
        self.context, self.device, self.qpc, self.properties = context, device, qpc, properties
        self.devices, self.session, self.is_active = [], None, False
        self.state = {}  # retained state: past_* name -> array (the "device memory")
        self.traffic = {"to_device": 0, "from_device": 0, "executions": 0}

    def load(self) -> int:
        import onnxruntime as ort

        if self.device is not None:
            devices = [self.device]
        elif self.properties.devMapping:
            devices = [int(d) for d in self.properties.devMapping.split(":")]
        else:
            devices = self.context.devices[:1]  # the runtime picks one
        bad = [d for d in devices if d not in self.context.devices or not 0 <= d < DEVICES]
        if bad:
            return _fail(f"devices {bad} are not in the context {self.context.devices} of {DEVICES} cards")
        needed = self.qpc.program["num_devices"]
        if len(devices) != needed:
            return _fail(f"{self.qpc.path} was compiled for {needed} device(s), loaded on {devices}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.qpc.model_path, options, providers=["CPUExecutionProvider"])
        self.devices = devices
        return QStatus.QS_SUCCESS

    def activate(self) -> int:
        if self.session is None:
            return _fail("activate before load")
        self.is_active = True
        for d in self.devices:
            active.setdefault(d, []).append(self.qpc.path)
        return QStatus.QS_SUCCESS

    def deactivate(self) -> int:
        if self.is_active:
            self.is_active = False
            for d in self.devices:
                active[d].remove(self.qpc.path)
        return QStatus.QS_SUCCESS

    def select(self, bound: dict):
        """The specialization whose shapes match every bound buffer, preferring the retained state's shape."""
        matches = [s for s in self.qpc.shapes if all(list(s[i]) == list(dims) for i, dims in bound.items())]

        def fits_state(shape):
            return all(
                list(self.state[b["name"]].shape) == list(shape[b["index"]])
                for b in self.qpc.bindings
                if b["name"] in self.state
            )

        preferred = [s for s in matches if fits_state(s)]
        return (preferred or matches or [None])[0]


class ExecObj:
    def __init__(self, context: Context, program: Program):
        self.program, self.buffers, self.dims, self.status = program, [], [], QStatus.QS_SUCCESS

    def setData(self, buffers, dims) -> int:
        if len(buffers) != len(self.program.qpc.bindings) or len(dims) != len(buffers):
            return _fail("setData needs one buffer and one dims entry per binding")
        self.buffers, self.dims = list(buffers), [(size, list(d)) for size, d in dims]
        return QStatus.QS_SUCCESS

    def execute(self) -> int:
        program, bindings = self.program, self.program.qpc.bindings
        if not program.is_active:
            return _fail("execute on an inactive program")
        bound = {}
        for b, buffer, (itemsize, dims) in zip(bindings, self.buffers, self.dims):
            if buffer.size == 0:
                continue
            dtype = np.dtype(_NP[b["type"]])
            if itemsize != dtype.itemsize or buffer.size != int(np.prod(dims)) * itemsize:
                return _fail(f"buffer of {b['name']}: {buffer.size} bytes for dims {dims} x {itemsize}")
            bound[b["index"]] = dims
        shape = program.select(bound)
        if shape is None:
            return _fail(f"No matching dimension found for {[(bindings[i]['name'], d) for i, d in bound.items()]}")
        feeds = {}
        for i, b in enumerate(bindings):
            if b["dir"] != aicapi.BUFFER_IO_TYPE_INPUT:
                continue
            graph_dtype = program.session.get_inputs()[i].type
            if i in bound:
                value = np.frombuffer(self.buffers[i].data, _NP[b["type"]]).reshape(bound[i])
                feeds[b["name"]] = value.astype(np.float32 if "float" in graph_dtype else value.dtype)
                if b["name"].startswith("past_"):
                    program.state[b["name"]] = feeds[b["name"]]
            elif b["name"].startswith("past_"):
                value = program.state.get(b["name"])
                if value is None:
                    value = np.zeros(shape[i], np.float32)
                if list(value.shape) != list(shape[i]):
                    return _fail(f"retained {b['name']} is {list(value.shape)}, the program runs {shape[i]}")
                feeds[b["name"]] = value
            else:
                return _fail(f"input {b['name']} has no buffer")
        names = [o.name for o in program.session.get_outputs()]
        results = dict(zip(names, program.session.run(None, feeds)))
        inputs = [i for i in bound if bindings[i]["dir"] == aicapi.BUFFER_IO_TYPE_INPUT]
        moved = {"to_device": sum(self.buffers[i].size for i in inputs), "from_device": 0}
        for b in (b for b in bindings if b["dir"] == aicapi.BUFFER_IO_TYPE_OUTPUT):
            value = results[b["name"]]
            if b["name"].endswith("_RetainedState"):
                program.state[b["name"][:-14]] = value
            if b["index"] in bound:
                data = value.astype(_NP[b["type"]]).tobytes()
                if len(data) != self.buffers[b["index"]].size:
                    return _fail(f"output {b['name']}: {len(data)} bytes, buffer {self.buffers[b['index']].size}")
                self.buffers[b["index"]] = QBuffer(data)
                moved["from_device"] += len(data)
        for counter in (traffic, program.traffic):
            counter["to_device"] += moved["to_device"]
            counter["from_device"] += moved["from_device"]
            counter["executions"] += 1
        return QStatus.QS_SUCCESS

    def waitForCompletion(self) -> int:
        return self.status

    def getData(self):
        return QStatus.QS_SUCCESS, list(self.buffers)
