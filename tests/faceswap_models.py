"""Tiny ONNX models with the signatures insightface routes by, so its real loading and
swapping code runs in tests without downloaded weights.

- detector (9 outputs: scores, boxes, keypoints for strides 8/16/32 with 2 anchors): a face
  is any 64x64 block (one stride-32 cell at the 128 px detector input) whose brightest colour
  channel is well above mid-grey;
- recogniser (112x112 -> 512): the embedding is the mean colour of the aligned crop (RGB
  around mid-grey) projected by three orthonormal rows, so cosine = colour-direction cosine;
- swapper ((1,3,128,128) + (1,512) -> (1,3,128,128), 512x512 ``emap`` as the last
  initializer): paints the crop with the colour its identity latent decodes to, so the output
  face carries the SOURCE identity by construction;
- enhancer (1,3,512,512 -> same): darkens slightly, to see that it ran.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 13)]
DET_SIZE = 128
STRIDES = (8, 16, 32)
FACE_CELL = 64  # image pixels of one stride-32 cell for a 256x256 picture (scale 0.5)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


def build_detector(path: Path) -> Path:
    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    inits += [
        _const("flat_shape", np.array([-1, 1], dtype=np.int64)),
        _const("zero", np.array(0.0, dtype=np.float32)),
        # Box = the anchor's cell; keypoints inside it (units of the stride).
        _const("box", np.array([[0.0, 0.0, 1.0, 1.0]], dtype=np.float32)),
        _const(
            "kps",
            np.array([[0.3, 0.35, 0.7, 0.35, 0.5, 0.55, 0.35, 0.75, 0.65, 0.75]],
                     dtype=np.float32),
        ),
    ]
    for s in STRIDES:
        n = (DET_SIZE // s) ** 2 * 2
        gain, bias = (10.0, -3.0) if s == 32 else (0.0, -10.0)
        inits += [
            _const(f"gain{s}", np.array(gain, dtype=np.float32)),
            _const(f"bias{s}", np.array(bias, dtype=np.float32)),
        ]
        nodes += [
            helper.make_node("AveragePool", ["input.1"], [f"pool{s}"],
                             kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("ReduceMax", [f"pool{s}"], [f"max{s}"], axes=[1], keepdims=1),
            helper.make_node("Transpose", [f"max{s}"], [f"hwc{s}"], perm=[0, 2, 3, 1]),
            helper.make_node("Concat", [f"hwc{s}", f"hwc{s}"], [f"anchors{s}"], axis=3),
            helper.make_node("Reshape", [f"anchors{s}", "flat_shape"], [f"flat{s}"]),
            helper.make_node("Mul", [f"flat{s}", f"gain{s}"], [f"scaled{s}"]),
            helper.make_node("Add", [f"scaled{s}", f"bias{s}"], [f"logit{s}"]),
            helper.make_node("Sigmoid", [f"logit{s}"], [f"score_{s}"]),
            helper.make_node("Mul", [f"flat{s}", "zero"], [f"nil{s}"]),
            helper.make_node("Add", [f"nil{s}", "box"], [f"bbox_{s}"]),
            helper.make_node("Add", [f"nil{s}", "kps"], [f"kps_{s}"]),
        ]
        outputs["score"].append(helper.make_tensor_value_info(f"score_{s}", TensorProto.FLOAT,
                                                              [n, 1]))
        outputs["bbox"].append(helper.make_tensor_value_info(f"bbox_{s}", TensorProto.FLOAT,
                                                             [n, 4]))
        outputs["kps"].append(helper.make_tensor_value_info(f"kps_{s}", TensorProto.FLOAT,
                                                            [n, 10]))
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        initializer=inits,
    )
    return _save(graph, path)


def projection(seed: int = 0) -> np.ndarray:
    """Three orthonormal rows in 512-d: colour (3) -> embedding (512) and back."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(512, 3)))
    return q.T.astype(np.float32)  # (3, 512)


def build_recognizer(path: Path, proj: np.ndarray) -> Path:
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["colour"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["colour", "proj"], ["fc1"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])],
        initializer=[_const("proj", proj)],
    )
    return _save(graph, path)


def build_swapper(path: Path, proj: np.ndarray) -> Path:
    nodes = [
        helper.make_node("MatMul", ["source", "unproj"], ["colour"]),
        helper.make_node("LpNormalization", ["colour"], ["direction"], axis=1, p=2),
        helper.make_node("Mul", ["direction", "amp"], ["shifted"]),
        helper.make_node("Add", ["shifted", "half"], ["fill"]),
        helper.make_node("Reshape", ["fill", "nchw"], ["fill4"]),
        helper.make_node("Mul", ["target", "zero"], ["blank"]),
        helper.make_node("Add", ["blank", "fill4"], ["output"]),
    ]
    inits = [
        _const("unproj", proj.T.copy()),
        _const("amp", np.array(0.45, dtype=np.float32)),
        _const("half", np.array(0.5, dtype=np.float32)),
        _const("zero", np.array(0.0, dtype=np.float32)),
        _const("nchw", np.array([1, 3, 1, 1], dtype=np.int64)),
        # insightface reads emap as the LAST initializer; identity keeps the latent as is.
        _const("emap", np.eye(512, dtype=np.float32)),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_inswapper",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=inits,
    )
    return _save(graph, path)


def build_enhancer(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "gain"], ["output"])],
        "tiny_gfpgan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])],
        initializer=[_const("gain", np.array(0.8, dtype=np.float32))],
    )
    return _save(graph, path)


def make_models_dir(root: Path, *, enhancer: bool = False) -> Path:
    """``root`` laid out as insightface expects: models/buffalo_l/*.onnx, inswapper_128.onnx."""
    proj = projection()
    buffalo = root / "models" / "buffalo_l"
    build_detector(buffalo / "det_10g.onnx")
    build_recognizer(buffalo / "w600k_r50.onnx", proj)
    build_swapper(root / "inswapper_128.onnx", proj)
    if enhancer:
        build_enhancer(root / "gfpgan_1.4.onnx")
    return root


def face_card(colour: tuple[int, int, int], *, seed: int = 0, size: int = 256) -> np.ndarray:
    """A mid-grey RGB picture with one coloured 64x64 "face" at (64..128, 64..128)."""
    rng = np.random.default_rng(seed)
    img = np.clip(127 + rng.normal(0, 3, size=(size, size, 3)), 0, 255).astype(np.uint8)
    img[FACE_CELL : 2 * FACE_CELL, FACE_CELL : 2 * FACE_CELL] = colour
    return img
