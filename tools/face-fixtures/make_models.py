"""Tiny random ONNX graphs with the input/output layout of antelopev2's networks.

- `scrfd_10g_bnkps.onnx`: input [1,3,height,width] (dynamic), 9 outputs in SCRFD's order
  (scores, boxes, keypoints, each for strides 8/16/32; 2 anchors; rank 2 like the real file).
  Scores respond to bright blobs 3-5 strides across (a hand-set centre-surround filter on the
  pooled image plus random features), so the synthetic faces of make_face_fixtures.py are found; boxes and
  keypoints are a face-like constant layout plus random features.
- `glintr100.onnx`: input [N,3,112,112] -> [N,512], random convolutions and a linear layer; no
  Sub/Mul among its first nodes, so insightface normalises it with mean 127.5, std 127.5.
- `genderage.onnx` (input 96x96) and `2d106det.onnx` (input 192x192): the other antelopev2 task
  shapes, which face analysis must recognise and skip.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 13)]
# Brightness (in blob units) at which each anchor's score crosses 0.5.
SCORE_BIAS = [0.72, 0.68]


def _init(name, array, inits):
    inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
    return name


def _shape(name, dims, inits):
    inits.append(numpy_helper.from_array(np.asarray(dims, dtype=np.int64), name))
    return name


def _model(nodes, inputs, outputs, inits, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="ltx-face fixtures")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def detector(rng):
    nodes, inits = [], []
    feats = 8
    # Centre-surround on the luma of the pooled blob: the mean of the inner 3x3 cells minus the
    # mean of the 9x9 ring around them, so a bright blob 3-5 cells across fires near its centre.
    rgb = np.array([0.299, 0.587, 0.114], np.float32)
    k = np.full((9, 9), -1.0 / 72.0, np.float32)
    k[3:6, 3:6] = 1.0 / 9.0
    centre_surround = np.zeros((2, 3, 9, 9), np.float32)
    centre_surround[:, :, :, :] = rgb[None, :, None, None] * k[None, None]
    outputs = {"score": [], "bbox": [], "kps": []}
    for s in (8, 16, 32):
        p = f"pool{s}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [p], kernel_shape=[s, s], strides=[s, s]))
        f = f"feat{s}"
        w = _init(f"w_feat{s}", rng.normal(0, 0.5, (feats, 3, 3, 3)), inits)
        b = _init(f"b_feat{s}", rng.normal(0, 0.1, feats), inits)
        nodes.append(helper.make_node("Conv", [p, w, b], [f + "_c"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f + "_c"], [f]))

        # Scores: sharp in the centre-surround contrast, a little random texture.
        gain = 16.0
        ws = _init(f"w_score{s}", centre_surround * gain, inits)
        bs = _init(f"b_score{s}", -np.array(SCORE_BIAS) * gain, inits)
        nodes.append(helper.make_node("Conv", [p, ws, bs], [f"sl{s}"], pads=[4, 4, 4, 4]))
        wr = _init(f"w_score_r{s}", rng.normal(0, 0.01, (2, feats, 3, 3)), inits)
        nodes.append(helper.make_node("Conv", [f, wr], [f"sr{s}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Add", [f"sl{s}", f"sr{s}"], [f"sa{s}"]))
        nodes.append(helper.make_node("Sigmoid", [f"sa{s}"], [f"sg{s}"]))

        # Boxes (l, t, r, b in strides) and keypoints (offsets in strides), per anchor.
        wb = _init(f"w_bbox{s}", rng.normal(0, 0.05, (8, feats, 3, 3)), inits)
        bb = _init(f"b_bbox{s}", np.tile([2.4, 2.6, 2.5, 2.7], 2) + rng.normal(0, 0.1, 8), inits)
        nodes.append(helper.make_node("Conv", [f, wb, bb], [f"bx{s}"], pads=[1, 1, 1, 1]))
        layout = [-0.8, -0.45, 0.8, -0.5, 0.05, 0.3, -0.6, 1.1, 0.6, 1.05]
        wk = _init(f"w_kps{s}", rng.normal(0, 0.03, (20, feats, 3, 3)), inits)
        bk = _init(f"b_kps{s}", np.tile(layout, 2) + rng.normal(0, 0.05, 20), inits)
        nodes.append(helper.make_node("Conv", [f, wk, bk], [f"kp{s}"], pads=[1, 1, 1, 1]))

        for kind, src, width in (("score", f"sg{s}", 1), ("bbox", f"bx{s}", 4), ("kps", f"kp{s}", 10)):
            t = f"{kind}{s}_t"
            nodes.append(helper.make_node("Transpose", [src], [t], perm=[0, 2, 3, 1]))
            shape = _shape(f"shape_{kind}{s}", [-1, width], inits)
            name = f"{kind}_{s}"
            nodes.append(helper.make_node("Reshape", [t, shape], [name]))
            outputs[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width]))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])]
    return _model(nodes, inputs, outputs["score"] + outputs["bbox"] + outputs["kps"], inits, "scrfd-like")


def recognizer(rng):
    nodes, inits = [], []
    chans = [(3, 8, 4, 4, 0), (8, 8, 3, 2, 1), (8, 4, 3, 2, 1)]
    x = "input.1"
    for i, (cin, cout, k, st, pad) in enumerate(chans):
        w = _init(f"conv{i}.weight", rng.normal(0, 1.0 / np.sqrt(cin * k * k), (cout, cin, k, k)), inits)
        b = _init(f"conv{i}.bias", rng.normal(0, 0.05, cout), inits)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"c{i}"], kernel_shape=[k, k], strides=[st, st],
                                      pads=[pad] * 4, name=f"Conv_{i}"))
        nodes.append(helper.make_node("PRelu", [f"c{i}", _init(f"prelu{i}", np.full((cout, 1, 1), 0.25), inits)],
                                      [f"r{i}"], name=f"PRelu_{i}"))
        x = f"r{i}"
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="MaxPool_0"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], axis=1, name="Flatten_0"))
    w = _init("fc.weight", rng.normal(0, 1.0 / 6.0, (512, 36)), inits)
    b = _init("fc.bias", rng.normal(0, 0.1, 512), inits)
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["683"], transB=1, name="Gemm_0"))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])]
    return _model(nodes, inputs, outputs, inits, "arcface-like")


def fixed_input_net(rng, size, out_dim, name):
    """A single pooling + linear graph with a fixed square input, for routing tests."""
    inits = []
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", _init("w", rng.normal(0, 1, (out_dim, 3)), inits)], ["fc1"], transB=1),
    ]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, out_dim])]
    return _model(nodes, inputs, outputs, inits, name)


def write_all(folder, seed=7):
    rng = np.random.default_rng(seed)
    onnx.save(detector(rng), f"{folder}/scrfd_10g_bnkps.onnx")
    onnx.save(recognizer(rng), f"{folder}/glintr100.onnx")
    onnx.save(fixed_input_net(rng, 96, 3, "genderage-like"), f"{folder}/genderage.onnx")
    onnx.save(fixed_input_net(rng, 192, 212, "2d106det-like"), f"{folder}/2d106det.onnx")
