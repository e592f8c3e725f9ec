#!/usr/bin/env python3
"""Reference for the LTX-Video 0.9.7/0.9.8 latent upsampler: diffusers 0.42.1's
LTXLatentUpsamplerModel and LTXLatentUpsamplePipeline on tiny random models.

Usage (from the repository root, in the venv of tools/ltx-fixtures/requirements.txt, after
make_ltx_fixtures.py, which wipes tests/fixtures/ltx/ and so deletes these files):

    python tools/ltx-fixtures/make_upsampler_fixture.py

Writes (CPU, float32, one thread, deterministic algorithms, fixed seeds; byte-identical on rerun):
- tests/fixtures/ltx/models/upsampler/latent_upsampler/{config.json,diffusion_pytorch_model.safetensors}
  a tiny spatial upsampler (8 latent channels like the 0.9.5 fixture's VAE, 32 mid channels,
  1 block per stage), saved by diffusers' save_pretrained as the upscaler repo ships it;
- tests/fixtures/ltx/models/upsampler_{spatial,temporal,spatiotemporal}_single_file.safetensors:
  the spatial weights again and the other two upsampling variants, as original Lightricks
  single files (no prefix, the config as JSON in the `config` metadata);
- tests/fixtures/ltx/refs/upsampler.{safetensors,json}: normalised input latents, the model's
  forward on de-normalised latents for each variant, and the pipeline's normalised output
  (`output_type="latent"`) for (adain_factor, tone_map_compression_ratio) in
  (0,0), (1,0), (1,0.6), (0.5,0.3), with the VAE of models/ltx-0.9.5 (non-trivial latent
  statistics, so de-/re-normalisation is observable).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import AutoencoderKLLTXVideo, LTXLatentUpsamplePipeline  # noqa: E402
from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ltx"
VAE_DIR = FIXTURES / "models" / "ltx-0.9.5" / "vae"
OUT_DIR = FIXTURES / "models" / "upsampler"
REFS = FIXTURES / "refs"

CONFIG = dict(in_channels=8, mid_channels=32, num_blocks_per_stage=1, dims=3)
LATENT_SHAPE = [1, 8, 3, 2, 3]
COMBOS = [(0.0, 0.0), (1.0, 0.0), (1.0, 0.6), (0.5, 0.3)]


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (GroupNorm affine too), scaled so activations stay in range."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    vae = AutoencoderKLLTXVideo.from_pretrained(VAE_DIR).eval()

    variants = {
        "spatial": dict(spatial_upsample=True, temporal_upsample=False),
        "temporal": dict(spatial_upsample=False, temporal_upsample=True),
        "spatiotemporal": dict(spatial_upsample=True, temporal_upsample=True),
    }
    models = {}
    for i, (name, flags) in enumerate(variants.items()):
        m = LTXLatentUpsamplerModel(**CONFIG, **flags).eval()
        randomise(m, 700 + i)
        models[name] = m

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    models["spatial"].save_pretrained(OUT_DIR / "latent_upsampler", safe_serialization=True)
    for name, m in models.items():
        cfg = {k: v for k, v in m.config.items() if not k.startswith("_")}
        file = FIXTURES / "models" / f"upsampler_{name}_single_file.safetensors"
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(file),
                  metadata={"config": json.dumps(cfg, sort_keys=True)})

    g = torch.Generator().manual_seed(720)
    latents = torch.randn(LATENT_SHAPE, generator=g) * 1.5
    out = {"latents": latents}
    mean = vae.latents_mean.view(1, -1, 1, 1, 1)
    std = vae.latents_std.view(1, -1, 1, 1, 1)
    raw = latents * std / vae.config.scaling_factor + mean
    with torch.no_grad():
        for name, m in models.items():
            out[f"forward_{name}"] = m(raw)
        pipe = LTXLatentUpsamplePipeline(vae=vae, latent_upsampler=models["spatial"])
        for af, tm in COMBOS:
            frames = pipe(latents=latents, adain_factor=af, tone_map_compression_ratio=tm,
                          output_type="latent").frames
            out[f"pipeline_adain{af}_tone{tm}"] = frames
    REFS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(REFS / "upsampler.safetensors"))
    meta = {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "config": CONFIG,
        "variants": {k: f"models/upsampler_{k}_single_file.safetensors" for k in variants},
        "vae": "models/ltx-0.9.5/vae",
        "combos": [{"adain_factor": a, "tone_map_compression_ratio": t,
                    "key": f"pipeline_adain{a}_tone{t}"} for a, t in COMBOS],
        "shapes": {k: list(v.shape) for k, v in out.items()},
    }
    (REFS / "upsampler.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(json.dumps(meta["shapes"], indent=1))


if __name__ == "__main__":
    main()
