"""Small OpenCV reference cases for the crate's re-implementations of the OpenCV calls that
insightface and InstantID make: cv2.resize (INTER_LINEAR), cv2.warpAffine (bilinear, border 0),
cv2.ellipse2Poly, cv2.fillConvexPoly, cv2.circle (filled) and InstantID's draw_kps.

Run by hand (see requirements.txt): python make_opencv_cases.py OUT.json
Images are stored as base64 of their raw HxWx3 uint8 bytes (row-major, interleaved)."""

import base64
import json
import sys

import cv2
import numpy as np

from draw_kps import draw_kps

assert cv2.__version__ == "4.10.0", f"pinned OpenCV 4.10.0, found {cv2.__version__}"
rng = np.random.default_rng(20240613)


def b64(a):
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return base64.b64encode(a.tobytes()).decode()


def bits(mask):
    return base64.b64encode(np.packbits(mask.astype(np.uint8), axis=None).tobytes()).decode()


def image(h, w):
    # Noise with smooth structure: exercises rounding everywhere, compresses a little.
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return base


cases = {"resize": [], "warp_affine": [], "ellipse2poly": [], "fill_convex_poly": [], "circle": [], "draw_kps": []}

sizes = [((17, 11), (8, 5)), ((40, 30), (20, 15)), ((40, 30), (13, 9)), ((9, 7), (31, 23)),
         ((23, 19), (45, 19)), ((30, 22), (15, 11)), ((31, 17), (31, 40)), ((48, 36), (32, 24)),
         ((37, 29), (37, 29)), ((45, 20), (16, 7)), ((11, 13), (23, 27)), ((50, 40), (40, 32))]
for (sw, sh), (dw, dh) in sizes:
    src = image(sh, sw)
    dst = cv2.resize(src, (dw, dh))
    cases["resize"].append({"src_w": sw, "src_h": sh, "dst_w": dw, "dst_h": dh, "src": b64(src), "dst": b64(dst)})

for k in range(12):
    sw, sh = int(rng.integers(16, 40)), int(rng.integers(16, 40))
    src = image(sh, sw)
    ang = rng.uniform(-np.pi, np.pi)
    s = rng.uniform(0.4, 2.5)
    tx, ty = rng.uniform(-20, 40, 2)
    if k % 3 == 0:
        # float32 matrices, as skimage returns for float32 landmarks
        m = np.array([[s * np.cos(ang), -s * np.sin(ang), tx], [s * np.sin(ang), s * np.cos(ang), ty]], np.float32)
    else:
        m = np.array([[s * np.cos(ang), -s * np.sin(ang), tx], [s * np.sin(ang), s * np.cos(ang), ty]], np.float64)
    ow, oh = int(rng.integers(12, 32)), int(rng.integers(12, 32))
    dst = cv2.warpAffine(src, m, (ow, oh), borderValue=0.0)
    cases["warp_affine"].append({"src_w": sw, "src_h": sh, "dst_w": ow, "dst_h": oh,
                                 "m": [float(v) for v in m.astype(np.float64).ravel()],
                                 "src": b64(src), "dst": b64(dst)})

for k in range(30):
    c = (int(rng.integers(-10, 80)), int(rng.integers(-10, 80)))
    axes = (int(rng.integers(0, 40)), int(rng.integers(0, 6)))
    angle = int(rng.integers(-400, 400))
    pts = cv2.ellipse2Poly(c, axes, angle, 0, 360, 1)
    cases["ellipse2poly"].append({"center": list(c), "axes": list(axes), "angle": angle,
                                  "points": pts.tolist()})
    w, h = 64, 48
    canvas = cv2.fillConvexPoly(np.zeros((h, w, 3)), pts, (255.0, 0.0, 255.0))
    assert (canvas[:, :, 0] == canvas[:, :, 2]).all() and not canvas[:, :, 1].any()
    # The polygon is the ellipse2poly case of the same index.
    cases["fill_convex_poly"].append({"w": w, "h": h, "mask": bits(canvas[:, :, 0] > 0)})

for k in range(16):
    w, h = 48, 40
    c = (int(rng.integers(-12, 60)), int(rng.integers(-12, 52)))
    r = int(rng.integers(0, 14)) if k else 10
    out = cv2.circle(np.zeros((h, w, 3), np.uint8), c, r, (255, 0, 255), -1)
    cases["circle"].append({"w": w, "h": h, "center": list(c), "radius": r, "mask": bits(out[:, :, 0] > 0)})

for k in range(3):
    w, h = int(rng.integers(40, 70)), int(rng.integers(40, 70))
    centre = rng.uniform(0, [w, h])
    kps = centre + rng.normal(0, 12, (5, 2))
    kps = kps.astype(np.float32)
    out = draw_kps(w, h, kps)
    cases["draw_kps"].append({"w": w, "h": h, "kps": [[float(x), float(y)] for x, y in kps], "dst": b64(out)})

with open(sys.argv[1], "w") as f:
    json.dump({"opencv": cv2.__version__, **cases}, f, separators=(",", ":"))
