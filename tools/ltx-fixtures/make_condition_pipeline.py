#!/usr/bin/env python3
"""References for LTXConditionPipeline (diffusers 0.42.1) on the tiny 0.9.5-layout fixture model
(models/ltx-0.9.5: timestep-conditioned VAE with non-trivial latent statistics, transformer,
scheduler), with prompt embeddings given (the text path is checked in condition_parts).

Usage (from the repository root, in the venv of tools/ltx-fixtures/requirements.txt, after
make_ltx_fixtures.py, which wipes tests/fixtures/ltx/):

    python tools/ltx-fixtures/make_condition_pipeline.py

Writes tests/fixtures/ltx/refs/condition_pipeline.{safetensors,json}: per case its condition
pixels (preprocessed by the pipeline's own VideoProcessor; the images are at the target size,
so PIL's resize is the identity), the output (normalised latents or [F,H,W,3] frames) and four
numbers drawn from the generator after the run (its state). CPU, float32, one thread.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXConditionPipeline,
    LTXVideoTransformer3DModel,
)
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ltx"
MODEL = FIXTURES / "models" / "ltx-0.9.5"
REFS = FIXTURES / "refs"
H, W = 64, 96


def frames(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) for _ in range(n)]


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tr = LTXVideoTransformer3DModel.from_pretrained(MODEL / "transformer").eval()
    vae = AutoencoderKLLTXVideo.from_pretrained(MODEL / "vae").eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(MODEL / "scheduler")
    assert not sched.config.use_dynamic_shifting
    pipe = LTXConditionPipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, transformer=tr)
    pipe.set_progress_bar_config(disable=True)

    g = torch.Generator().manual_seed(950)
    L, C = 16, tr.config.caption_channels
    pe, ne = torch.randn(1, L, C, generator=g), torch.randn(1, L, C, generator=g)
    pm = torch.zeros(1, L, dtype=torch.bool)
    pm[:, :6] = True
    nm = torch.zeros(1, L, dtype=torch.bool)
    nm[:, :3] = True
    out = {"prompt_embeds": pe, "prompt_mask": pm.float(), "negative_embeds": ne, "negative_mask": nm.float()}
    img0, img1 = frames(1, 1)[0], frames(1, 2)[0]
    vid9, vid17 = frames(9, 3), frames(17, 4)
    pp = pipe.video_processor
    pixels = {
        "img0": pp.preprocess(img0, H, W).unsqueeze(2),
        "img1": pp.preprocess(img1, H, W).unsqueeze(2),
        "vid9": pp.preprocess_video(vid9, H, W),
        "vid17": pp.preprocess_video(vid17, H, W),
    }
    for k, v in pixels.items():
        out[f"pixels_{k}"] = v
    sources = {"img0": ("image", img0), "img1": ("image", img1), "vid9": ("video", vid9), "vid17": ("video", vid17)}

    def cond(name, frame_index, strength):
        kind, data = sources[name]
        return LTXVideoCondition(**{kind: data}, frame_index=frame_index, strength=strength)

    cases = [
        # The replaced service's pass 1, scaled down: a frame-0 image, CFG 3, image_cond_noise 0.15.
        dict(name="image0_cfg_latent", conds=[("img0", 0, 1.0)], args=dict(num_frames=17, num_inference_steps=5), output="latent"),
        dict(name="image0_cfg_frames", conds=[("img0", 0, 1.0)],
             args=dict(num_frames=17, num_inference_steps=4, decode_timestep=0.05), output="np"),
        # An extra image at frame 16, a video at frame 8, fractional strengths, CFG + rescale.
        dict(name="multi_rescale", conds=[("vid9", 0, 0.9), ("img1", 16, 0.6), ("vid17", 8, 0.8)],
             args=dict(num_frames=25, num_inference_steps=4, guidance_rescale=0.7, image_cond_noise_scale=0.1), output="latent"),
        # A distilled timestep list with guidance 1 (no negative batch).
        dict(name="distilled_g1", conds=[("img0", 0, 1.0)],
             args=dict(num_frames=17, timesteps=[1000.0, 993.0, 987.0, 981.0, 975.0, 909.0, 725.0, 0.03], guidance_scale=1.0), output="latent"),
        # No condition at all (text to video).
        dict(name="t2v", conds=[], args=dict(num_frames=9, num_inference_steps=3), output="latent"),
    ]
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "height": H, "width": W, "cases": []}
    for i, c in enumerate(cases):
        seed = 960 + i
        gen = torch.Generator().manual_seed(seed)
        args = dict(height=H, width=W, prompt_embeds=pe, prompt_attention_mask=pm,
                    negative_prompt_embeds=ne, negative_prompt_attention_mask=nm,
                    generator=gen, output_type=c["output"], **c["args"])
        if c["conds"]:
            args["conditions"] = [cond(*x) for x in c["conds"]]
        with torch.no_grad():
            res = pipe(**args).frames
        if c["output"] == "np":
            res = torch.from_numpy(np.asarray(res[0]))
        out[f"{c['name']}_out"] = res.float()
        out[f"{c['name']}_after"] = torch.randn(4, generator=gen)
        meta["cases"].append({"name": c["name"], "seed": seed, "output": c["output"],
                              "conditions": [{"pixels": n, "frame_index": fi, "strength": s} for n, fi, s in c["conds"]],
                              "args": c["args"]})
    # The refine pass: the first case's latents, upsampling skipped, denoise_strength 0.4 of 10 steps.
    gen = torch.Generator().manual_seed(980)
    with torch.no_grad():
        res = pipe(height=H, width=W, num_frames=17, num_inference_steps=10, denoise_strength=0.4,
                   latents=out["image0_cfg_latent_out"], conditions=[cond("img0", 0, 1.0)],
                   image_cond_noise_scale=0.025, prompt_embeds=pe, prompt_attention_mask=pm,
                   negative_prompt_embeds=ne, negative_prompt_attention_mask=nm, generator=gen,
                   output_type="latent").frames
    out["refine_out"] = res.float()
    out["refine_after"] = torch.randn(4, generator=gen)
    meta["refine"] = {"seed": 980, "latents": "image0_cfg_latent_out", "num_frames": 17, "steps": 10,
                      "denoise_strength": 0.4, "image_cond_noise_scale": 0.025}
    REFS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(REFS / "condition_pipeline.safetensors"))
    meta["shapes"] = {k: list(v.shape) for k, v in out.items()}
    (REFS / "condition_pipeline.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print({k: list(v.shape) for k, v in out.items() if k.endswith("_out")})


if __name__ == "__main__":
    main()
