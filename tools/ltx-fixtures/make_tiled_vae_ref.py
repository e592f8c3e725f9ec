#!/usr/bin/env python3
"""Reference for tiled VAE decoding: diffusers 0.42.1's AutoencoderKLLTXVideo tiling on the tiny 0.9.1 VAE.

Usage (from the repository root, in the venv of tools/ltx-fixtures/requirements.txt, after
make_ltx_fixtures.py, which wipes tests/fixtures/ltx/ and so deletes these files):

    python tools/ltx-fixtures/make_tiled_vae_ref.py

Writes tests/fixtures/ltx/refs/vae_tiled_0.9.1.{safetensors,json}. CPU, float32, one thread,
deterministic algorithms, fixed seeds; running it twice gives byte-identical files.

What diffusers does here (read from autoencoder_kl_ltx.py, and what the Rust port reproduces):
- `enable_tiling(...)` only sets `use_tiling`; temporal tiling (`_temporal_tiled_decode`) runs only
  when `use_framewise_decoding` is also True, which nothing in diffusers sets. The script sets it
  so that the decode tiles in time as well as in space.
- Temporal: latent tiles `z[:, :, i : i + min_frames/8 + 1]` for i in range(0, F, stride_frames/8);
  each is decoded (spatially tiled when larger than the spatial tile); tiles after the first drop
  their LAST decoded frame; then `blend_t` with the previous tile and a crop to stride_frames
  frames (the first keeps stride_frames + 1).
- Spatial (`tiled_decode`): latent tiles of min/32 at a stride of stride/32, row-major; each tile is
  blended in place with the tile above (`blend_v`) and then to the left (`blend_h`) over
  `min - stride` sample pixels and cropped to `stride` pixels.
- The 0.9.1 decoder injects noise from the global generator (torch.randn((H, W)) per ResNet), so
  every decoder call draws noise the size of its tile; the order of the calls matters.
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import AutoencoderKLLTXVideo  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ltx"
VAE_DIR = FIXTURES / "models" / "ltx-0.9.1" / "vae"
REFS = FIXTURES / "refs"
NAME = "vae_tiled_0.9.1"

# Latents [B, C, F, H, W]: the smallest shape that gives >= 2 tiles with a blend in T, H and W
# under the tiling below (3 latent frames -> 17 frames, 2 x 3 latent pixels -> 64 x 96 pixels).
LATENT_SHAPE = [1, 8, 3, 2, 3]
SEED_LATENTS = 610
SEED_UNTILED_GLOBAL = 611
SEED_TILED_GLOBAL = 612
DECODE_TIMESTEP = 0.05

TILING = {
    "tile_sample_min_height": 64,
    "tile_sample_min_width": 64,
    "tile_sample_stride_height": 32,
    "tile_sample_stride_width": 32,
    "tile_sample_min_num_frames": 16,
    "tile_sample_stride_num_frames": 8,
}


@contextlib.contextmanager
def record_global_randn(store: list):
    """Record the shape of every torch.randn call made with the global generator."""
    orig = torch.randn

    def wrapped(*args, **kwargs):
        out = orig(*args, **kwargs)
        if kwargs.get("generator") is None:
            store.append(list(out.shape))
        return out

    torch.randn = wrapped
    try:
        yield
    finally:
        torch.randn = orig


@contextlib.contextmanager
def record_decoder_calls(vae, store: list):
    """Record the latent shape of every decoder forward, in call order."""
    orig = vae.decoder.forward

    def wrapped(z, *args, **kwargs):
        store.append(list(z.shape))
        return orig(z, *args, **kwargs)

    vae.decoder.forward = wrapped
    try:
        yield
    finally:
        vae.decoder.forward = orig


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def stats(t: torch.Tensor) -> dict:
    d = t.double()
    return {
        "sum": d.sum().item(),
        "sum_sq": d.pow(2).sum().item(),
        "min": d.min().item(),
        "max": d.max().item(),
    }


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers_logging.set_verbosity_error()

    vae = AutoencoderKLLTXVideo.from_pretrained(str(VAE_DIR), torch_dtype=torch.float32).eval()
    assert vae.config.timestep_conditioning, "the 0.9.1 decoder is timestep-conditioned"
    z = torch.randn(*LATENT_SHAPE, generator=torch.Generator().manual_seed(SEED_LATENTS))
    temb = torch.tensor([DECODE_TIMESTEP])

    with torch.no_grad():
        untiled_draws: list = []
        torch.manual_seed(SEED_UNTILED_GLOBAL)
        with record_global_randn(untiled_draws):
            untiled = vae.decode(z, temb=temb).sample

        vae.enable_tiling(**TILING)
        vae.use_framewise_decoding = True
        tiled_draws: list = []
        calls: list = []
        torch.manual_seed(SEED_TILED_GLOBAL)
        with record_global_randn(tiled_draws), record_decoder_calls(vae, calls):
            tiled = vae.decode(z, temb=temb).sample

        # Reproducible: the same seed gives the same tiled decode.
        torch.manual_seed(SEED_TILED_GLOBAL)
        again = vae.decode(z, temb=temb).sample
        assert torch.equal(again, tiled)
    assert tiled.shape == untiled.shape, (tiled.shape, untiled.shape)

    tensors = {"latents": z, "decode_timestep": temb, "tiled": tiled}
    out = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    REFS.mkdir(parents=True, exist_ok=True)
    save_file(out, str(REFS / f"{NAME}.safetensors"))

    meta = {
        "model": "models/ltx-0.9.1/vae",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "latents_seed": SEED_LATENTS,
        "latents_call": "torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(latents_seed))",
        "decode_timestep": DECODE_TIMESTEP,
        "tiling": TILING,
        "use_framewise_decoding": True,
        "spatial_compression_ratio": vae.spatial_compression_ratio,
        "temporal_compression_ratio": vae.temporal_compression_ratio,
        "untiled_global_seed": SEED_UNTILED_GLOBAL,
        "untiled_call": "torch.manual_seed(untiled_global_seed); vae.decode(latents, temb=decode_timestep).sample",
        "tiled_global_seed": SEED_TILED_GLOBAL,
        "tiled_call": (
            "vae.enable_tiling(**tiling); vae.use_framewise_decoding = True; "
            "torch.manual_seed(tiled_global_seed); vae.decode(latents, temb=decode_timestep).sample"
        ),
        "tiled_decoder_calls": calls,
        "tiled_noise_draws": tiled_draws,
        "untiled_noise_draws": untiled_draws,
        "untiled_stats": stats(untiled),
        "tiled_stats": stats(tiled),
        "psnr_peak": 2.0,
        "psnr_tiled_vs_untiled_db": psnr(tiled, untiled),
        "max_abs_tiled_vs_untiled": (tiled - untiled).abs().max().item(),
        "untiled_note": (
            "the untiled decode is not stored (17x64x96x3 float32 = 1.25 MB); tests recompute it "
            "with the same seed and check it against untiled_stats and the PSNR"
        ),
        "tensors": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in out.items()},
    }
    with open(REFS / f"{NAME}.json", "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True, allow_nan=False)
        fh.write("\n")
    print(
        f"{NAME}: latents {LATENT_SHAPE} -> {list(tiled.shape)}; {len(calls)} decoder calls; "
        f"PSNR tiled vs untiled {meta['psnr_tiled_vs_untiled_db']:.3f} dB, "
        f"max abs {meta['max_abs_tiled_vs_untiled']:.4f}"
    )


if __name__ == "__main__":
    main()
