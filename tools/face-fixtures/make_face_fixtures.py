"""Parity fixtures for crates/face: synthetic photos, tiny antelopev2-shaped ONNX graphs, and
what insightface 2.1's own FaceAnalysis (and InstantID's draw_kps) make of them.

Run by hand from this folder (see requirements.txt):  python make_face_fixtures.py OUT_DIR
(the repository's copy lives in tests/fixtures/face). Writes:
- antelopev2/*.onnx (make_models.py), images/*.png (drawn here, RGB, lossless);
- reference.json: per image, the letterbox (size, det_scale, sha256 of the RGB canvas), every
  face insightface returns in its order (bbox, det_score, kps, embedding as float32 and the
  warpAffine matrix norm_crop used), and the index InstantID would pick (largest box);
- crops/<image>_<i>.png (norm_crop, RGB) and kps/<image>.png (draw_kps of the picked face).
"""

import hashlib
import json
import os
import sys

import cv2
import numpy as np
import onnxruntime
from insightface.app import FaceAnalysis
from insightface.utils import face_align

import make_models
from draw_kps import draw_kps

assert cv2.__version__ == "4.10.0", f"pinned OpenCV 4.10.0, found {cv2.__version__}"
assert onnxruntime.__version__ == "1.32.0", onnxruntime.__version__

PNG = [cv2.IMWRITE_PNG_COMPRESSION, 9]
SKIN = [(224, 186, 160), (210, 170, 140), (240, 210, 186), (200, 160, 130)]


def face(img, cx, cy, r, skin, tilt=0.0):
    """A drawn face: skin ellipse, two eyes, a nose and a mouth (RGB image, in place)."""
    cv2.ellipse(img, (cx, cy), (int(r * 0.85), r), tilt, 0, 360, skin, -1, cv2.LINE_AA)
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))

    def at(dx, dy):
        return int(cx + (dx * c - dy * s) * r), int(cy + (dx * s + dy * c) * r)

    for ex in (-0.35, 0.35):
        cv2.circle(img, at(ex, -0.2), max(2, r // 8), (40, 30, 30), -1, cv2.LINE_AA)
    cv2.circle(img, at(0, 0.12), max(1, r // 12), tuple(int(v * 0.8) for v in skin), -1, cv2.LINE_AA)
    cv2.ellipse(img, at(0, 0.5), (max(2, r // 3), max(1, r // 10)), tilt, 0, 360, (120, 40, 50), -1, cv2.LINE_AA)


def background(h, w, seed):
    rng = np.random.default_rng(seed)
    # Texture in 4x4 blocks (cheap to store), light noise in 8x8 blocks.
    y, x = np.mgrid[0 : h // 4 + 1, 0 : w // 4 + 1].astype(np.float32) * 4
    base = 45 + 25 * np.sin(x / 37.0 + seed) * np.cos(y / 23.0)
    img = np.stack([base, base * 0.9 + 10, base * 1.1], axis=-1).repeat(4, 0).repeat(4, 1)[:h, :w]
    img += rng.integers(0, 3, (h // 8 + 1, w // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip(img, 0, 255).astype(np.uint8)


def images():
    """name -> RGB uint8 image; sizes pick both letterbox branches, up- and downscaling."""
    out = {}
    img = background(300, 400, 1)  # landscape, scaled up 1.6x to 640x480
    face(img, 110, 120, 45, SKIN[0], 8)
    face(img, 270, 170, 23, SKIN[1], -12)
    face(img, 350, 60, 12, SKIN[2], 0)  # smaller than the recogniser's 112 px
    out["group"] = img
    img = background(400, 300, 2)  # portrait, 480x640
    face(img, 150, 190, 48, SKIN[3], 5)
    out["portrait"] = img
    img = background(600, 800, 3)  # landscape, scaled down 0.8
    face(img, 350, 280, 92, SKIN[2], -6)
    face(img, 640, 440, 46, SKIN[0], 15)
    out["large"] = img
    out["noface"] = background(192, 256, 4)
    return out


def f32(v):
    """A float32 as its shortest decimal, so the JSON stays small and parses back exactly."""
    return float(str(np.float32(v)))


def letterbox(img, size=640):
    """insightface SCRFD's letterbox (its own code path, reproduced to hash the canvas)."""
    im_ratio = float(img.shape[0]) / img.shape[1]
    if im_ratio > 1.0:
        new_h, new_w = size, int(size / im_ratio)
    else:
        new_w, new_h = size, int(size * im_ratio)
    det = np.zeros((size, size, 3), np.uint8)
    det[:new_h, :new_w] = cv2.resize(img, (new_w, new_h))
    return new_w, new_h, float(new_h) / img.shape[0], det


def main(out_dir):
    models = os.path.join(out_dir, "antelopev2")
    for sub in ("antelopev2", "images", "crops", "kps"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    make_models.write_all(models)
    app = FaceAnalysis(name=models, providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    reference = {"insightface": "2.1", "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                 "det_size": 640, "det_thresh": 0.5, "images": {}}
    for name, rgb in images().items():
        cv2.imwrite(os.path.join(out_dir, "images", f"{name}.png"), rgb[:, :, ::-1], PNG)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # as InstantID hands PIL's RGB to insightface
        faces = app.get(bgr)
        new_w, new_h, det_scale, det = letterbox(bgr)
        entry = {"width": rgb.shape[1], "height": rgb.shape[0], "letterbox": [new_w, new_h],
                 "det_scale": det_scale,
                 "letterbox_sha256": hashlib.sha256(np.ascontiguousarray(det[:, :, ::-1]).tobytes()).hexdigest(),
                 "faces": []}
        for i, f in enumerate(faces):
            m = face_align.estimate_norm(f.kps, 112)
            crop = face_align.norm_crop(bgr, f.kps, 112)
            cv2.imwrite(os.path.join(out_dir, "crops", f"{name}_{i}.png"), crop, PNG)
            entry["faces"].append({
                "bbox": [f32(v) for v in f.bbox], "det_score": f32(f.det_score),
                "kps": [[f32(x), f32(y)] for x, y in f.kps],
                "embedding": [f32(v) for v in f.embedding], "norm_crop_m": [float(v) for v in m.ravel()],
            })
        if faces:
            # InstantID: sorted(..., key=bbox area)[-1]
            pick = sorted(range(len(faces)), key=lambda i: (faces[i].bbox[2] - faces[i].bbox[0]) *
                          (faces[i].bbox[3] - faces[i].bbox[1]))[-1]
            entry["instantid_face"] = pick
            kps_img = draw_kps(rgb.shape[1], rgb.shape[0], faces[pick].kps)
            cv2.imwrite(os.path.join(out_dir, "kps", f"{name}.png"), kps_img[:, :, ::-1], PNG)
        reference["images"][name] = entry
        print(name, rgb.shape, "faces:", len(faces), [round(float(f.det_score), 3) for f in faces])
    with open(os.path.join(out_dir, "reference.json"), "w") as fh:
        json.dump(reference, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
