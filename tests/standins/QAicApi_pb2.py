# ruff: noqa: N999 (the SDK module's own name)
"""STAND-IN for the QAIC platform SDK's ``QAicApi_pb2`` (test-only code; not the SDK, which is proprietary and
cannot be installed on our machines).

It implements exactly what the runtime users read from a program's I/O descriptor (the surface QEfficient's
``QAICInferenceSession`` uses): the data-type and direction constants, and ``IoDesc`` with
``ParseFromString``, ``selected_set.bindings`` (name, index, dir, type, dims, size, is_partial_buf_allowed) and
``allowed_shapes[i].shapes`` (type, dims). The wire format is JSON, not protobuf: only the stand-in ``qaicrt``
writes it. Constant values follow the SDK's C enum order; nothing in our code depends on the numbers.
"""

import json

FLOAT_TYPE = 0
FLOAT_16_TYPE = 1
INT8_Q_TYPE = 2
UINT8_Q_TYPE = 3
INT16_Q_TYPE = 4
INT32_Q_TYPE = 5
INT32_I_TYPE = 6
INT64_I_TYPE = 7
INT8_TYPE = 8
BFLOAT16_TYPE = 11

BUFFER_IO_TYPE_INPUT = 1
BUFFER_IO_TYPE_OUTPUT = 2


class _Record:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class IoDesc:
    def __init__(self):
        self.selected_set = _Record(bindings=[])
        self.allowed_shapes = []

    def ParseFromString(self, data: bytes) -> None:
        desc = json.loads(bytes(data).decode())
        self.selected_set = _Record(bindings=[_Record(**b) for b in desc["bindings"]])
        self.allowed_shapes = [_Record(shapes=[_Record(**s) for s in shape]) for shape in desc["allowed_shapes"]]

    @staticmethod
    def serialize(bindings, allowed_shapes) -> bytes:
        return json.dumps({"bindings": bindings, "allowed_shapes": allowed_shapes}).encode()
