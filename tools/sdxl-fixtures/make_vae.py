#!/usr/bin/env python3
"""Reference fixtures for SDXL's VAE: diffusers 0.42.1's AutoencoderKL on a tiny random model.

Usage (from the repository root; run by hand, nothing runs it automatically):

    /tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_vae.py

Versions: torch 2.11.0 (CPU), diffusers 0.42.1, safetensors (tools/ltx-fixtures/requirements.txt).
Deterministic: CPU, float32, one thread, deterministic algorithms, fixed seeds, no downloads;
running it twice gives byte-identical files.

Writes tests/fixtures/sdxl/vae/:
- vae/{config.json, diffusion_pytorch_model.safetensors}: `save_pretrained` of a random
  AutoencoderKL with SDXL's block structure (4 DownEncoderBlock2D / UpDecoderBlock2D,
  layers_per_block 2, mid-block attention, latent_channels 4, scaling_factor 0.13025,
  force_upcast) at a tiny width: block_out_channels [8, 16, 16, 16], 4 GroupNorm groups,
  sample_size 32, so `enable_tiling()` tiles any latent wider or taller than 4 (32 px).
- refs.safetensors + refs.json:
  - `decode_latents` [2, 4, 4, 5] -> `decoded` (plain `decode`, tiling off);
  - `decoded_upcast`: the same latents through the model cast to float16 and back to float32
    (what diffusers' SDXL pipeline decodes with when the VAE is float16 and force_upcast is set);
  - `tiled_latents_a` [1, 4, 6, 8] (a 48x64 image) and `tiled_latents_b` [1, 4, 5, 7] ->
    `tiled_a`, `tiled_b` with `enable_tiling()`;
  - `image` [2, 3, 32, 48] in [-1, 1] -> `posterior_mean`, `posterior_std`, `posterior_logvar`
    (`encode(...).latent_dist`), and `posterior_sample` =
    `latent_dist.sample(generator=torch.Generator("cpu").manual_seed(seed))`.
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "sdxl" / "vae"

SEED_WEIGHTS = 700
SEED_INPUTS = 701
SEED_SAMPLE = 702


def reinit(module: torch.nn.Module, seed: int) -> None:
    """Seeded normal weights scaled by fan-in, norms near 1, small biases: activations that
    neither vanish nor explode through the random network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                new = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() >= 2:
                fan_in = math.prod(p.shape[1:])
                new = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
            else:
                new = 0.05 * torch.randn(p.shape, generator=g)
            p.copy_(new)


def main() -> None:
    assert torch.__version__.startswith("2.11.0"), torch.__version__
    assert diffusers.__version__ == "0.42.1", diffusers.__version__
    diffusers_logging.set_verbosity_error()  # the fp16 round trip's "keep in float32" notice
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.13025,
        force_upcast=True,
    ).eval()
    reinit(vae, SEED_WEIGHTS)
    assert vae.tile_latent_min_size == 4 and vae.tile_sample_min_size == 32

    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "vae").mkdir(parents=True)
    vae.save_pretrained(OUT / "vae", safe_serialization=True)

    g = torch.Generator().manual_seed(SEED_INPUTS)
    refs: dict[str, torch.Tensor] = {
        "decode_latents": torch.randn(2, 4, 4, 5, generator=g),
        "tiled_latents_a": torch.randn(1, 4, 6, 8, generator=g),
        "tiled_latents_b": torch.randn(1, 4, 5, 7, generator=g),
        "image": torch.rand(2, 3, 32, 48, generator=g) * 2.0 - 1.0,
    }
    with torch.no_grad():
        refs["decoded"] = vae.decode(refs["decode_latents"]).sample

        upcast = copy.deepcopy(vae).to(torch.float16).to(torch.float32)
        refs["decoded_upcast"] = upcast.decode(refs["decode_latents"]).sample

        post = vae.encode(refs["image"]).latent_dist
        refs["posterior_mean"] = post.mean
        refs["posterior_logvar"] = post.logvar
        refs["posterior_std"] = post.std
        refs["posterior_sample"] = post.sample(generator=torch.Generator("cpu").manual_seed(SEED_SAMPLE))

        vae.enable_tiling()
        for case in ("a", "b"):
            refs[f"tiled_{case}"] = vae.decode(refs[f"tiled_latents_{case}"]).sample
        vae.disable_tiling()

    refs = {k: v.contiguous() for k, v in refs.items()}
    save_file(refs, str(OUT / "refs.safetensors"))
    meta = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "posterior_sample_seed": SEED_SAMPLE,
        "tile_sample_min_size": vae.tile_sample_min_size,
        "tile_latent_min_size": vae.tile_latent_min_size,
        "tile_overlap_factor": vae.tile_overlap_factor,
        "shapes": {k: list(v.shape) for k, v in sorted(refs.items())},
    }
    (OUT / "refs.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(ROOT)} ({total} bytes)")


if __name__ == "__main__":
    main()
