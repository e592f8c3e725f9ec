"""The insightface side of `ltx-i2v bench faces`: detection and embedding time per image with
insightface 2.1's FaceAnalysis on the CPU (only the detector and recogniser loaded, the same
work as ltx-i2v does; intra-op threads as given). Prints one JSON object.

python bench_insightface.py MODEL_DIR THREADS REPEAT IMAGE...
"""

import json
import sys
import time

import cv2
import onnxruntime
from insightface.app import FaceAnalysis


def main(model_dir, threads, repeat, images):
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    t0 = time.perf_counter()
    app = FaceAnalysis(name=model_dir, providers=["CPUExecutionProvider"], sess_options=so,
                       allowed_modules=["detection", "recognition"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    load = time.perf_counter() - t0
    det, rec = app.det_model, app.models["recognition"]
    out = {"load_s": load, "images": {}}
    for path in images:
        img = cv2.imread(path)  # BGR, as insightface takes it
        app.get(img)  # warm-up
        best_det, best_rec, faces = float("inf"), float("inf"), 0
        for _ in range(repeat):
            t = time.perf_counter()
            bboxes, kpss = det.detect(img, max_num=0, metric="default")
            t_det = time.perf_counter() - t
            t = time.perf_counter()
            from insightface.app.common import Face
            for i in range(bboxes.shape[0]):
                rec.get(img, Face(bbox=bboxes[i, 0:4], kps=kpss[i], det_score=bboxes[i, 4]))
            t_rec = time.perf_counter() - t
            faces = bboxes.shape[0]
            best_det, best_rec = min(best_det, t_det), min(best_rec, t_rec)
        out["images"][path] = {"faces": faces, "detect_s": best_det, "embed_s": best_rec}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
