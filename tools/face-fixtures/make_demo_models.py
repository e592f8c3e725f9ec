"""The demo family's face graphs: a tiny SCRFD-layout detector that finds exactly one face in
any image, and an ArcFace-layout recogniser, so `--instantid-model demo` and
`ltx-i2v instantid --model demo` run the real face code (ONNX Runtime, letterbox, anchor
decoding, NMS, alignment, embedding) on a fresh machine. The faces they "find" are not faces.

Run by hand from this folder (see requirements.txt; the repository's copy lives in
crates/pipelines/assets/instantid-demo/face/):

    /tmp/face-venv/bin/python make_demo_models.py ../../crates/pipelines/assets/instantid-demo/face

- `scrfd_demo.onnx`: input [1,3,height,width] (dynamic), SCRFD's 9 outputs (scores, boxes,
  keypoints for strides 8/16/32, 2 anchors, rank 2). The score logits come from the anchor's
  position, not from the pixels: +6 at stride 32, cell (x 3, y 3), anchor 0 (centre (96, 96)
  in the detector canvas), −14 everywhere else, plus a texture term bounded to ±0.5 (tanh of
  random features), so exactly one anchor passes insightface's 0.5 threshold whatever the
  image holds. Cell coordinates are CumSums of a ones map (a zero-weight convolution with bias
  1), so the graph works at any input size from 128 up. Boxes and keypoints are a face-like
  layout (keypoints in the proportions of ArcFace's template, eyes 48 canvas pixels apart) plus
  bounded texture terms (±3.2 px box sides, ±1.6 px keypoints). The keypoints stay within
  x 74..118, y 78..138 of the 640² canvas, so they lie inside every image whose short side is
  at least 22 % of its long side (insightface letterboxes into the canvas's top-left corner).
- `arcface_demo.onnx`: make_models.py's recogniser graph (input [N,3,112,112] → [N,512],
  random convolutions and a linear layer, no Sub/Mul first nodes, so mean/std 127.5) with its
  own seed: the embedding is computed from the aligned crop, so different photos give
  different embeddings.

Before writing, the graphs are checked with insightface 2.1's own FaceAnalysis: exactly one
face, keypoints inside the image, for noise, black, white, face-photo, landscape, portrait and
small images; different images give different embeddings.
"""

import os
import sys

import cv2
import numpy as np
import onnx
from insightface.app import FaceAnalysis
from onnx import TensorProto, helper

import make_models
from make_models import _init, _model, _shape

assert cv2.__version__ == "4.10.0", f"pinned OpenCV 4.10.0, found {cv2.__version__}"

# Stride 32, cell (3, 3), anchor 0: the one face, centred at (96, 96) in the canvas.
FACE_STRIDE, FACE_CELL = 32, (3, 3)
LOGIT_FACE, LOGIT_ELSE, LOGIT_PER_CELL, TEXTURE = 6.0, -14.0, 20.0, 0.5
# Box sides (l, t, r, b) and keypoint offsets (x, y), in strides from the anchor centre.
BOX = [2.0, 2.4, 2.0, 2.3]
KPS = [-0.75, -0.5, 0.75, -0.5, 0.0, 0.36, -0.62, 1.24, 0.62, 1.24]
BOX_TEXTURE, KPS_TEXTURE = 0.1, 0.05


def bounded(nodes, inits, rng, feat, cin, cout, gain, name):
    """gain · tanh(random 3x3 conv of the features): pixel-dependent, |·| < gain."""
    w = _init(f"w_{name}", rng.normal(0, 0.5, (cout, cin, 3, 3)), inits)
    nodes.append(helper.make_node("Conv", [feat, w], [f"{name}_c"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Tanh", [f"{name}_c"], [f"{name}_t"]))
    nodes.append(helper.make_node("Mul", [f"{name}_t", _init(f"g_{name}", gain, inits)], [name]))
    return name


def score_logits(nodes, inits, s, pooled):
    """[1, 2, h, w] logits from the anchor position alone."""
    ones = f"ones{s}"
    w0 = _init(f"w_ones{s}", np.zeros((1, 3, 1, 1)), inits)
    nodes.append(helper.make_node("Conv", [pooled, w0, _init(f"b_ones{s}", [1.0], inits)], [ones]))
    other = f"else{s}"
    nodes.append(helper.make_node("Mul", [ones, _init(f"c_else{s}", LOGIT_ELSE, inits)], [other]))
    if s != FACE_STRIDE:
        nodes.append(helper.make_node("Concat", [other, other], [f"logit{s}"], axis=1))
        return f"logit{s}"
    # |x + 1 − (cx + 1)| + |y + 1 − (cy + 1)|, from CumSums of the ones map.
    dist = []
    for axis, centre, tag in ((3, FACE_CELL[0], "x"), (2, FACE_CELL[1], "y")):
        nodes.append(helper.make_node("CumSum", [ones, _shape(f"axis_{tag}{s}", axis, inits)], [f"{tag}{s}"]))
        nodes.append(helper.make_node("Sub", [f"{tag}{s}", _init(f"c_{tag}{s}", centre + 1.0, inits)],
                                      [f"d{tag}{s}"]))
        nodes.append(helper.make_node("Abs", [f"d{tag}{s}"], [f"a{tag}{s}"]))
        dist.append(f"a{tag}{s}")
    nodes.append(helper.make_node("Add", dist, [f"dist{s}"]))
    nodes.append(helper.make_node("Mul", [f"dist{s}", _init(f"c_per{s}", -LOGIT_PER_CELL, inits)], [f"dm{s}"]))
    nodes.append(helper.make_node("Add", [f"dm{s}", _init(f"c_face{s}", LOGIT_FACE, inits)], [f"face{s}"]))
    nodes.append(helper.make_node("Concat", [f"face{s}", other], [f"logit{s}"], axis=1))
    return f"logit{s}"


def detector(rng):
    nodes, inits = [], []
    feats = 4
    outputs = {"score": [], "bbox": [], "kps": []}
    for s in (8, 16, 32):
        p = f"pool{s}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [p], kernel_shape=[s, s], strides=[s, s]))
        f = f"feat{s}"
        w = _init(f"w_feat{s}", rng.normal(0, 0.5, (feats, 3, 3, 3)), inits)
        b = _init(f"b_feat{s}", rng.normal(0, 0.1, feats), inits)
        nodes.append(helper.make_node("Conv", [p, w, b], [f + "_c"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f + "_c"], [f]))

        logits = score_logits(nodes, inits, s, p)
        tex = bounded(nodes, inits, rng, f, feats, 2, TEXTURE, f"score_tex{s}")
        nodes.append(helper.make_node("Add", [logits, tex], [f"sa{s}"]))
        nodes.append(helper.make_node("Sigmoid", [f"sa{s}"], [f"sg{s}"]))
        heads = {"score": (f"sg{s}", 1)}
        for kind, base, gain, width in (("bbox", BOX, BOX_TEXTURE, 4), ("kps", KPS, KPS_TEXTURE, 10)):
            tex = bounded(nodes, inits, rng, f, feats, 2 * width, gain, f"{kind}_tex{s}")
            nodes.append(helper.make_node("Add", [tex, _init(f"base_{kind}{s}", np.tile(base, 2)[:, None, None],
                                                              inits)], [f"{kind}_v{s}"]))
            heads[kind] = (f"{kind}_v{s}", width)
        for kind, (src, width) in heads.items():
            t = f"{kind}{s}_t"
            nodes.append(helper.make_node("Transpose", [src], [t], perm=[0, 2, 3, 1]))
            name = f"{kind}_{s}"
            nodes.append(helper.make_node("Reshape", [t, _shape(f"shape_{kind}{s}", [-1, width], inits)], [name]))
            outputs[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width]))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])]
    model = _model(nodes, inputs, outputs["score"] + outputs["bbox"] + outputs["kps"], inits, "scrfd-demo")
    model.producer_name = "ltx-i2v demo"
    return model


def check_images(rng):
    """name -> RGB uint8: noise, flat, a drawn face, every aspect the docstring promises."""
    out = {
        "noise_square": rng.integers(0, 256, (512, 512, 3)),
        "black": np.zeros((480, 640, 3)),
        "white": np.full((640, 480, 3), 255),
        "landscape_4x1": rng.integers(0, 256, (256, 1024, 3)),
        "portrait_1x4": rng.integers(0, 256, (1024, 256, 3)),
        "small": rng.integers(0, 256, (24, 40, 3)),
    }
    photo = cv2.imread(os.path.join(os.path.dirname(__file__), "../../tests/fixtures/face/images/portrait.png"))
    if photo is not None:
        out["photo"] = photo[:, :, ::-1]
    return {k: np.ascontiguousarray(v.astype(np.uint8)) for k, v in out.items()}


def check(folder):
    app = FaceAnalysis(name=os.path.abspath(folder), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    embeddings = {}
    for name, rgb in check_images(np.random.default_rng(3)).items():
        faces = app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
        assert len(faces) == 1, f"{name}: {len(faces)} faces"
        h, w = rgb.shape[:2]
        kps = faces[0].kps
        assert (kps[:, 0] >= 0).all() and (kps[:, 0] < w).all() and (kps[:, 1] >= 0).all() and (
            kps[:, 1] < h).all(), f"{name}: keypoints {kps.tolist()} outside {w}x{h}"
        embeddings[name] = faces[0].embedding
        print(f"{name} {w}x{h}: score {faces[0].det_score:.4f}, bbox {np.round(faces[0].bbox, 1).tolist()}, "
              f"|embedding| {np.linalg.norm(faces[0].embedding):.3f}")
    names = list(embeddings)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(embeddings[a], embeddings[b]), f"{a} and {b}: same embedding"


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(11)
    onnx.save(detector(rng), os.path.join(out_dir, "scrfd_demo.onnx"))
    rec = make_models.recognizer(rng)
    rec.producer_name = "ltx-i2v demo"
    onnx.save(rec, os.path.join(out_dir, "arcface_demo.onnx"))
    check(out_dir)
    for f in sorted(os.listdir(out_dir)):
        print(f, os.path.getsize(os.path.join(out_dir, f)), "bytes")


if __name__ == "__main__":
    main(sys.argv[1])
