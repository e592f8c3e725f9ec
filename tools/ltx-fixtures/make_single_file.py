"""Writes tests/fixtures/ltx/single_file/ltx-0.9.0-single.safetensors: the 0.9.0 fixture
model's transformer and VAE in the original Lightricks single-file layout
(`model.diffusion_model.*`, `vae.*`), so the Rust single-file loader can be checked against
the same references as the diffusers folder.

The original names come from inverting diffusers' renames; the script proves the inversion by
running diffusers' own convert_ltx_{transformer,vae}_checkpoint_to_diffusers on the result and
requiring exactly the diffusers names and tensors back. Run after make_ltx_fixtures.py.
"""

from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import (convert_ltx_transformer_checkpoint_to_diffusers,
                                                 convert_ltx_vae_checkpoint_to_diffusers)
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "tests/fixtures/ltx/models/ltx-0.9.0"
OUT = REPO / "tests/fixtures/ltx/single_file/ltx-0.9.0-single.safetensors"

TRANSFORMER = [("patchify_proj", "proj_in"), ("adaln_single", "time_embed"), ("q_norm", "norm_q"), ("k_norm", "norm_k")]
# diffusers name fragment -> original fragment, most specific first (0.9.0 layout).
VAE = [
    ("decoder.mid_block", "decoder.up_blocks.0"),
    ("decoder.up_blocks.1.upsamplers.0", "decoder.up_blocks.2"),
    ("decoder.up_blocks.2.conv_in", "decoder.up_blocks.4"),
    ("decoder.up_blocks.2.upsamplers.0", "decoder.up_blocks.5"),
    ("decoder.up_blocks.3.conv_in", "decoder.up_blocks.7"),
    ("decoder.up_blocks.3.upsamplers.0", "decoder.up_blocks.8"),
    ("decoder.up_blocks.3", "decoder.up_blocks.9"),
    ("decoder.up_blocks.2", "decoder.up_blocks.6"),
    ("decoder.up_blocks.1", "decoder.up_blocks.3"),
    ("decoder.up_blocks.0", "decoder.up_blocks.1"),
    ("encoder.down_blocks.0.downsamplers.0", "encoder.down_blocks.1"),
    ("encoder.down_blocks.0.conv_out", "encoder.down_blocks.2"),
    ("encoder.down_blocks.1.downsamplers.0", "encoder.down_blocks.4"),
    ("encoder.down_blocks.1.conv_out", "encoder.down_blocks.5"),
    ("encoder.down_blocks.2.downsamplers.0", "encoder.down_blocks.7"),
    ("encoder.mid_block", "encoder.down_blocks.9"),
    ("encoder.down_blocks.3", "encoder.down_blocks.8"),
    ("encoder.down_blocks.2", "encoder.down_blocks.6"),
    ("encoder.down_blocks.1", "encoder.down_blocks.3"),
    ("conv_shortcut.conv", "conv_shortcut"),
    ("resnets", "res_blocks"),
    ("norm3", "norm3.norm"),
]


def invert(name, rules):
    for new, old in rules:
        if new in name:
            name = name.replace(new, old, 1)
            if rules is VAE and old.startswith(("decoder.", "encoder.")):
                # one block rename per key; the generic renames below still apply
                rules_rest = [r for r in rules if not r[0].startswith(("decoder.", "encoder."))]
                for n2, o2 in rules_rest:
                    name = name.replace(n2, o2)
                return name
    return name


def main():
    tr = load_file(MODEL / "transformer/diffusion_pytorch_model.safetensors")
    vae = load_file(MODEL / "vae/diffusion_pytorch_model.safetensors")
    original = {}
    for k, v in tr.items():
        name = k
        for new, old in TRANSFORMER:
            name = name.replace(new, old)
        original["model.diffusion_model." + name] = v
    for k, v in vae.items():
        if k == "latents_mean":
            name = "per_channel_statistics.mean-of-means"
        elif k == "latents_std":
            name = "per_channel_statistics.std-of-means"
        else:
            name = invert(k, VAE)
        original["vae." + name] = v
    # The original checkpoints also carry statistics diffusers drops.
    original["vae.per_channel_statistics.mean-of-stds"] = torch.ones_like(vae["latents_std"])

    back_tr = convert_ltx_transformer_checkpoint_to_diffusers(dict(original))
    back_vae = convert_ltx_vae_checkpoint_to_diffusers(dict(original))
    assert set(back_tr) == set(tr), (set(back_tr) ^ set(tr))
    assert set(back_vae) == set(vae), sorted(set(back_vae) ^ set(vae))
    for k in tr:
        assert torch.equal(back_tr[k], tr[k]), k
    for k in vae:
        assert torch.equal(back_vae[k], vae[k]), k
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(original, str(OUT))
    print(f"{OUT.relative_to(REPO)}: {len(original)} tensors, diffusers round trip exact")


if __name__ == "__main__":
    main()
