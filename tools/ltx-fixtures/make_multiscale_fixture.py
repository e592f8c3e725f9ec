#!/usr/bin/env python3
"""Reference for the replaced service's multi-scale flow (diffusers 0.42.1 docs flow for
LTX-Video 0.9.7/0.9.8), scaled down to the tiny fixture models: LTXConditionPipeline on
models/ltx-0.9.5 at int(size·2/3) floored to 32 (4 steps, latents out), LTXLatentUpsamplePipeline
with models/upsampler (built with the base pipeline's VAE), the refine pass at twice that size
(denoise_strength 0.4 of 5 steps, decode_timestep 0.05, image_cond_noise_scale 0.025), then every
PIL frame resized to the requested 100x70 with LANCZOS. 96 frames requested. One generator.

The condition frame is a random 90x60 RGB image standing for the H.264-decoded frame (the parity
test starts from the decoded frame). Prompt embeddings are given.

Usage (from the repository root, in the venv of tools/ltx-fixtures/requirements.txt, after
make_ltx_fixtures.py and make_upsampler_fixture.py):

    python tools/ltx-fixtures/make_multiscale_fixture.py

Writes tests/fixtures/ltx/refs/multiscale.{safetensors,json}.
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
    LTXLatentUpsamplePipeline,
    LTXVideoTransformer3DModel,
)
from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel  # noqa: E402
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ltx"
MODEL = FIXTURES / "models" / "ltx-0.9.5"
REFS = FIXTURES / "refs"

SETTINGS = dict(width=100, height=70, num_frames=96, downscale_factor=2 / 3, steps_lowres=4,
                steps_refine=5, denoise_strength=0.4, decode_timestep=0.05,
                image_cond_noise_scale=0.025, seed=5)


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tr = LTXVideoTransformer3DModel.from_pretrained(MODEL / "transformer").eval()
    vae = AutoencoderKLLTXVideo.from_pretrained(MODEL / "vae").eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(MODEL / "scheduler")
    pipe = LTXConditionPipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, transformer=tr)
    ups = LTXLatentUpsamplerModel.from_pretrained(FIXTURES / "models" / "upsampler" / "latent_upsampler").eval()
    pipe_upsample = LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=ups)
    pipe.set_progress_bar_config(disable=True)
    pipe_upsample.set_progress_bar_config(disable=True)

    g = torch.Generator().manual_seed(990)
    L, C = 16, tr.config.caption_channels
    pe, ne = torch.randn(1, L, C, generator=g), torch.randn(1, L, C, generator=g)
    pm = torch.zeros(1, L, dtype=torch.bool)
    pm[:, :5] = True
    nm = torch.zeros(1, L, dtype=torch.bool)
    nm[:, :2] = True
    rng = np.random.default_rng(991)
    frame = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    condition = LTXVideoCondition(video=[PIL.Image.fromarray(frame)], frame_index=0)
    s = SETTINGS
    embeds = dict(prompt_embeds=pe, prompt_attention_mask=pm, negative_prompt_embeds=ne,
                  negative_prompt_attention_mask=nm)

    # The docs flow, as the service runs it.
    dh, dw = int(s["height"] * s["downscale_factor"]), int(s["width"] * s["downscale_factor"])
    dh, dw = dh - dh % pipe.vae_spatial_compression_ratio, dw - dw % pipe.vae_spatial_compression_ratio
    generator = torch.Generator().manual_seed(s["seed"])
    with torch.no_grad():
        latents = pipe(conditions=[condition], width=dw, height=dh, num_frames=s["num_frames"],
                       num_inference_steps=s["steps_lowres"], generator=generator, output_type="latent",
                       **embeds).frames
        up = pipe_upsample(latents=latents, output_type="latent").frames
        video = pipe(conditions=[condition], width=dw * 2, height=dh * 2, num_frames=s["num_frames"],
                     denoise_strength=s["denoise_strength"], num_inference_steps=s["steps_refine"],
                     latents=up, decode_timestep=s["decode_timestep"],
                     image_cond_noise_scale=s["image_cond_noise_scale"], generator=generator,
                     output_type="pil", **embeds).frames[0]
    video = [f.resize((s["width"], s["height"]), PIL.Image.LANCZOS) for f in video]
    frames = torch.from_numpy(np.stack([np.asarray(f) for f in video]))
    out = {
        "prompt_embeds": pe, "prompt_mask": pm.float(), "negative_embeds": ne, "negative_mask": nm.float(),
        "condition_frame": torch.from_numpy(frame), "low_latents": latents, "upsampled_latents": up,
        "frames": frames, "after": torch.randn(4, generator=generator),
    }
    REFS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(REFS / "multiscale.safetensors"))
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "settings": s,
            "pass1": [dw, dh], "pass2": [dw * 2, dh * 2],
            "shapes": {k: list(v.shape) for k, v in out.items()}}
    (REFS / "multiscale.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(meta["pass1"], meta["pass2"], meta["shapes"]["frames"])


if __name__ == "__main__":
    main()
