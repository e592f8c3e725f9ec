#!/usr/bin/env python3
"""The whole InstantID pipeline from a face photo, as InstantX runs it, for
crates/pipelines/tests/instantid_parity.rs: insightface's FaceAnalysis (the embedding and the
keypoints), InstantX's draw_kps, then InstantX's pipeline on the tiny random SDXL set of
tests/fixtures/sdxl/instantid.

Usage, by hand, from the repository root (CPU only, nothing is downloaded):

    /tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_instantid_pipeline.py

It runs in two environments, because insightface's stack (OpenCV 4.10, onnxruntime 1.32) and
diffusers' (torch 2.11) live in separate venvs: the face stage re-runs this file with
`/tmp/face-venv/bin/python` (`FACE_PYTHON` overrides it; tools/face-fixtures/requirements.txt)
and hands back numpy files; the generation runs in this interpreter (the venv of
tools/ltx-fixtures/requirements.txt). Deterministic: fixed seeds, float32, one thread.

Face stage, per case, exactly as InstantX's infer.py / gradio demo do it:
- `FaceAnalysis(name=tests/fixtures/face/antelopev2, providers=["CPUExecutionProvider"])`,
  `prepare(ctx_id=-1, det_size=(640, 640))` (the fixture graphs of make_face_fixtures.py);
- the face photo as given (no resize), RGB → BGR, `app.get`; the face with the largest box
  (`sorted(..., key=area)[-1]`); its raw `embedding`;
- without a pose image the keypoint image is `draw_kps` (tools/face-fixtures/draw_kps.py) of that
  face's keypoints at the photo's size; with one, of `app.get(pose)[-1]`'s keypoints at the pose
  image's size (the demo's pose branch);
- reference faces: each photo's largest face; the embedding conditioned on is the mean of the
  face photo's and the references' embeddings, summed in float64 and rounded to float32
  (InstantX takes one face; averaging several is what ComfyUI_InstantID does and what
  ltx-i2v's `reference_images` do). The pose photo has exactly one face, so the demo's `[-1]`
  and ltx-i2v's largest face are the same one.

Generation: make_instantid_loop.py's `InstantIdReference` (diffusers 0.42.1's
StableDiffusionXLControlNetPipeline with InstantID's face path) loaded from
tests/fixtures/sdxl/instantid like a user's folders, a CPU generator seeded with the case's
seed, CFG on; the keypoint image goes in at its drawn size and is Lanczos-resized to
width × height by diffusers' `prepare_image`.

Writes tests/fixtures/sdxl/instantid_pipeline/ (wiped first): refs.safetensors with, per case,
`embedding` (the conditioned embedding, [512]), `embeddings` (each photo's, [N, 512]), `image`
(float [H, W, 3] in [0, 1]) and `image_u8`; `<case>.kps.png` (the drawn keypoint image, before
the resize); refs.json (the cases, the faces found, versions) and README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = REPO / "tests/fixtures/sdxl/instantid_pipeline"
MODELS = REPO / "tests/fixtures/sdxl/instantid"
FACE_MODELS = REPO / "tests/fixtures/face/antelopev2"
PHOTOS = REPO / "tests/fixtures/face/images"
FACE_PYTHON = os.environ.get("FACE_PYTHON", "/tmp/face-venv/bin/python")

CASES = {
    # One photo, its own keypoints; the 300x400 keypoint image is resized to 64x80.
    "portrait": dict(face="portrait.png", pose=None, references=[], prompt="a photo of a woman, film grain",
                     negative_prompt="lowres, watermark", width=64, height=80, steps=3, guidance_scale=5.0,
                     controlnet_conditioning_scale=0.8, ip_adapter_scale=0.8, seed=42),
    # The largest of five detections in an 800x600 photo, the keypoints of another photo (pose),
    # and a third photo's largest face averaged in.
    "pose_reference": dict(face="large.png", pose="portrait.png", references=["group.png"],
                           prompt="portrait of a man in the rain", negative_prompt=None, width=80, height=64,
                           steps=3, guidance_scale=4.0, controlnet_conditioning_scale=1.0, ip_adapter_scale=0.6,
                           seed=7),
}

README = """# InstantID whole-pipeline fixture (insightface 2.1 + diffusers 0.42.1; tiny random models)

Made by `tools/sdxl-fixtures/make_instantid_pipeline.py` (its docstring says how): face photos of
`tests/fixtures/face/images/` through insightface's FaceAnalysis on `tests/fixtures/face/antelopev2`
and InstantX's draw_kps, then InstantX's pipeline on the models of `tests/fixtures/sdxl/instantid`.
Checked by `crates/pipelines/tests/instantid_parity.rs`. Regenerate by hand from the repository root:

```sh
/tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_instantid_pipeline.py
```
"""


def largest(faces):
    """InstantID's pick: sorted(faces, key=bbox area)[-1]."""
    return sorted(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))[-1]


def face_stage(out: Path) -> None:
    """Runs in the face venv: every case's embeddings and keypoint image as .npy files in `out`."""
    import cv2
    import insightface
    import numpy as np
    import onnxruntime
    from insightface.app import FaceAnalysis

    sys.path.insert(0, str(REPO / "tools/face-fixtures"))
    from draw_kps import draw_kps

    assert cv2.__version__ == "4.10.0", cv2.__version__
    assert onnxruntime.__version__ == "1.32.0", onnxruntime.__version__
    app = FaceAnalysis(name=str(FACE_MODELS), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))

    def photo(name):
        rgb = cv2.imread(str(PHOTOS / name))[:, :, ::-1]  # as PIL's RGB
        return rgb, app.get(np.ascontiguousarray(rgb[:, :, ::-1]))  # InstantX: RGB → BGR

    info = {"insightface": insightface.__version__, "onnxruntime": onnxruntime.__version__,
            "opencv": cv2.__version__, "cases": {}}
    for name, case in CASES.items():
        rgb, faces = photo(case["face"])
        face = largest(faces)
        embeddings = [face["embedding"]]
        found = {case["face"]: dict(faces=len(faces), bbox=face["bbox"].tolist(), kps=face["kps"].tolist())}
        if case["pose"]:
            pose_rgb, pose_faces = photo(case["pose"])
            # InstantX's demo takes pose_faces[-1], ltx-i2v the largest: one face makes them agree.
            assert len(pose_faces) == 1, f"{case['pose']}: {len(pose_faces)} faces"
            pose = pose_faces[-1]
            kps = draw_kps(pose_rgb.shape[1], pose_rgb.shape[0], pose["kps"])
            found[case["pose"]] = dict(faces=len(pose_faces), kps=pose["kps"].tolist(), role="pose")
        else:
            kps = draw_kps(rgb.shape[1], rgb.shape[0], face["kps"])
        for ref in case["references"]:
            _, ref_faces = photo(ref)
            r = largest(ref_faces)
            embeddings.append(r["embedding"])
            found[ref] = dict(faces=len(ref_faces), bbox=r["bbox"].tolist(), role="reference")
        stacked = np.stack(embeddings).astype(np.float32)
        np.save(out / f"{name}.embeddings.npy", stacked)
        np.save(out / f"{name}.embedding.npy", stacked.astype(np.float64).mean(axis=0).astype(np.float32))
        np.save(out / f"{name}.kps.npy", np.ascontiguousarray(kps))
        info["cases"][name] = found
    (out / "face.json").write_text(json.dumps(info))


def main() -> None:
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                      CUDA_VISIBLE_DEVICES="")
    import shutil

    import diffusers
    import numpy as np
    import PIL
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE))
    import make_instantid_loop as mil

    assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__
    assert diffusers.__version__ == "0.42.1", diffusers.__version__
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    mil.diffusers_logging.set_verbosity_error()
    mil.transformers_logging.set_verbosity_error()

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([FACE_PYTHON, __file__, "--face-stage", tmp], check=True)
        face_info = json.loads((Path(tmp) / "face.json").read_text())
        arrays = {p.name[: -len(".npy")]: np.load(p) for p in Path(tmp).glob("*.npy")}

    pipe = mil.load_reference(MODELS)
    refs, meta, kps_png = {}, {}, {}
    for name, case in CASES.items():
        embedding = torch.from_numpy(arrays[f"{name}.embedding"])
        kps = arrays[f"{name}.kps"]
        record = {}
        pipe(case["prompt"], case["negative_prompt"], embedding, Image.fromarray(kps), case["height"],
             case["width"], case["steps"], case["guidance_scale"], case["controlnet_conditioning_scale"],
             case["ip_adapter_scale"], torch.Generator().manual_seed(case["seed"]), record)
        out = dict(embedding=embedding, embeddings=torch.from_numpy(arrays[f"{name}.embeddings"]),
                   image=record["image"], image_u8=record["image_u8"])
        kps_png[name] = Image.fromarray(kps)
        for k, v in out.items():
            refs[f"{name}.{k}"] = v.contiguous().clone()
        inside = ((record["image"] > 0) & (record["image"] < 1)).float().mean().item()
        assert inside > 0.5, f"{name}: only {inside:.0%} of the pixels are unclamped"
        meta[name] = dict(case, faces=face_info["cases"][name], unclamped_fraction=round(inside, 3),
                          kps_size=[kps.shape[1], kps.shape[0]])
        print(f"{name}: kps {kps.shape[1]}x{kps.shape[0]} → image {tuple(record['image'].shape)}, "
              f"{inside:.0%} unclamped, |embedding| {embedding.norm():.3f}")

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    save_file(refs, OUT / "refs.safetensors")
    os.chmod(OUT / "refs.safetensors", 0o644)
    for name, img in kps_png.items():
        img.save(OUT / f"{name}.kps.png")
    versions = dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
                    pillow=PIL.__version__, python=sys.version.split()[0],
                    **{k: face_info[k] for k in ("insightface", "onnxruntime", "opencv")})
    doc = dict(cases=meta, versions=versions, det_size=640, face_models="tests/fixtures/face/antelopev2",
               models="tests/fixtures/sdxl/instantid",
               reference="insightface FaceAnalysis + InstantX draw_kps + InstantIdReference "
                         "(tools/sdxl-fixtures/make_instantid_pipeline.py)")
    (OUT / "refs.json").write_text(json.dumps(doc, indent=1) + "\n")
    (OUT / "README.md").write_text(README)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(REPO)} ({total / 1e3:.0f} kB)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--face-stage":
        face_stage(Path(sys.argv[2]))
    else:
        main()
