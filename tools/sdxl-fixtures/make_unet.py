#!/usr/bin/env python3
"""Tiny SDXL UNet / IdentityNet (ControlNet) / IP-Adapter reference fixtures.

Usage, by hand, from the repository root (CPU only, nothing is downloaded):

    /tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_unet.py

Versions: Python 3.11, torch 2.11.0 (CPU), diffusers 0.42.1, safetensors 0.8 (the venv of
tools/ltx-fixtures/requirements.txt). Deterministic: every parameter and input is drawn from
fixed-seed generators, in float32.

Writes tests/fixtures/sdxl/unet/ (wiped first):

- unet/, controlnet/: `save_pretrained` folders of a UNet2DConditionModel and a ControlNetModel
  with SDXL's structure (DownBlock2D + 2×CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn,
  2×CrossAttnUpBlock2D + UpBlock2D, text_time addition embedding, linear projections,
  per-block transformer depth [1, 1, 2], head counts from `attention_head_dim`) at tiny widths.
  Every parameter is random, the ControlNet's zero convolutions too.
- ip_adapter.safetensors: random `{n}.to_k_ip.weight` / `{n}.to_v_ip.weight`, named exactly as
  the `ip_adapter` dict of InstantID's ip-adapter.bin (n = position in
  `unet.attn_processors`, odd for the attn2 layers).
- refs.safetensors: inputs and outputs (see CASES below); refs.json: the IP layer list in the
  processor order, the scales and token counts, and the versions used.

The IP-Adapter reference is InstantX's IPAttnProcessor2_0 (ip_adapter/attention_processor.py of
instantX-research/InstantID), re-implemented below from the spec (§1.3) and installed the way
InstantID's `set_ip_adapter` does (AttnProcessor2_0 on attn1, IP processors on attn2, weights
loaded into `nn.ModuleList(unet.attn_processors.values())` with strict names). It is
cross-checked here against diffusers" IPAdapterAttnProcessor2_0 given the same weights.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import (  # noqa: E402
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
)

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests/fixtures/sdxl/unet"

POOLED = 16
TIME_DIM = 8
CROSS = 24
TEXT_TOKENS = 7
FACE_TOKENS = 4
IP_SCALE = 0.8
CN_SCALE = 0.8

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 12, 16),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(1, 2, 4),
    cross_attention_dim=CROSS,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM,
    norm_num_groups=4,
    flip_sin_to_cos=True,
    freq_shift=0,
)


# SDXL base 1.0's unet/config.json and InstantID's ControlNetModel/config.json as released
# (written out for the Rust tests, which build them shapes-only: parameter counts, IP layers).
RELEASED_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.19.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}
RELEASED_IDENTITYNET = {
    "_class_name": "ControlNetModel",
    "_diffusers_version": "0.21.2",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "class_embed_type": None,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "global_pool_conditions": False,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_time_scale_shift": "default",
    "transformer_layers_per_block": [1, 2, 10],
    "upcast_attention": None,
    "use_linear_projection": True,
}


def released_params(cls, cfg):
    with torch.device("meta"):
        model = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    return sum(p.numel() for p in model.parameters()), model


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (norm weights near 1), in named_parameters order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim == 1 and leaf == "weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


class InstantXAttnProcessor2_0(torch.nn.Module):
    """InstantX's AttnProcessor2_0 (an nn.Module without parameters, so that the ModuleList of
    all processors numbers attn1 and attn2 alike): diffusers" plain SDPA processor."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class InstantXIPAttnProcessor2_0(torch.nn.Module):
    """InstantX's IPAttnProcessor2_0 (no region control): the last `num_tokens` context tokens
    are the image tokens; text attention + scale · attention(q, to_k_ip(ip), to_v_ip(ip))."""

    def __init__(self, hidden_size, cross_attention_dim, scale, num_tokens):
        super().__init__()
        self.scale = scale
        self.num_tokens = num_tokens
        self.to_k_ip = torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        end_pos = encoder_hidden_states.shape[1] - self.num_tokens
        text, ip = encoder_hidden_states[:, :end_pos, :], encoder_hidden_states[:, end_pos:, :]
        key = attn.to_k(text)
        value = attn.to_v(text)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        def heads(x):
            return x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        ip_key, ip_value = heads(self.to_k_ip(ip)), heads(self.to_v_ip(ip))
        ip_out = F.scaled_dot_product_attention(query, ip_key, ip_value, attn_mask=None)
        ip_out = ip_out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = out + self.scale * ip_out
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def hidden_size_of(unet, name):
    """As InstantID's set_ip_adapter (and diffusers' loader) compute it."""
    bo = list(unet.config.block_out_channels)
    if name.startswith("mid_block"):
        return bo[-1]
    if name.startswith("up_blocks"):
        return list(reversed(bo))[int(name[len("up_blocks.")])]
    return bo[int(name[len("down_blocks.")])]


def ip_layer_list(unet, cross=CROSS):
    """attn2 processors in `unet.attn_processors` order, with n (their ModuleList index)."""
    layers = []
    for n, name in enumerate(unet.attn_processors.keys()):
        if name.endswith("attn2.processor"):
            module = name[: -len(".processor")]
            layers.append(dict(n=n, name=module, query_dim=hidden_size_of(unet, name), cross_dim=cross))
    return layers


def install_instantx(unet, ip_state, scale, num_tokens):
    procs = {}
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor"):
            procs[name] = InstantXAttnProcessor2_0()
        else:
            procs[name] = InstantXIPAttnProcessor2_0(hidden_size_of(unet, name), CROSS, scale, num_tokens)
    unet.set_attn_processor(procs)
    ip_layers = torch.nn.ModuleList(unet.attn_processors.values())
    ip_layers.load_state_dict(ip_state, strict=True)


def install_diffusers_ip(unet, ip_state, scale, num_tokens):
    procs = {}
    for n, name in enumerate(unet.attn_processors.keys()):
        if name.endswith("attn1.processor"):
            procs[name] = AttnProcessor2_0()
            continue
        p = IPAdapterAttnProcessor2_0(hidden_size_of(unet, name), CROSS, num_tokens=(num_tokens,), scale=scale)
        p.load_state_dict(
            {"to_k_ip.0.weight": ip_state[f"{n}.to_k_ip.weight"], "to_v_ip.0.weight": ip_state[f"{n}.to_v_ip.weight"]}
        )
        procs[name] = p
    unet.set_attn_processor(procs)


def main() -> None:
    torch.set_grad_enabled(False)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    randomize(unet, 1)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(4, 8, 8, 16), load_weights_from_unet=False
    ).eval()
    randomize(controlnet, 2)
    unet.save_pretrained(OUT / "unet", safe_serialization=True)
    controlnet.save_pretrained(OUT / "controlnet", safe_serialization=True)

    layers = ip_layer_list(unet)
    g = torch.Generator().manual_seed(3)
    ip_state = {}
    for layer in layers:
        for kind in ("to_k_ip", "to_v_ip"):
            w = torch.randn((layer["query_dim"], layer["cross_dim"]), generator=g) / CROSS**0.5
            ip_state[f"{layer['n']}.{kind}.weight"] = w.contiguous()
    save_file(ip_state, OUT / "ip_adapter.safetensors")

    g = torch.Generator().manual_seed(4)
    b, h, w = 2, 8, 12
    r = {}
    r["sample"] = torch.randn((b, 4, h, w), generator=g)
    r["timestep"] = torch.tensor(601.0)
    r["timesteps"] = torch.tensor([999.0, 21.0])
    r["text"] = torch.randn((b, TEXT_TOKENS, CROSS), generator=g)
    r["face"] = torch.randn((b, FACE_TOKENS, CROSS), generator=g)
    r["text_embeds"] = torch.randn((b, POOLED), generator=g)
    r["time_ids"] = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0], [80.0, 120.0, 8.0, 4.0, 64.0, 96.0]])
    r["controlnet_cond"] = torch.rand((b, 3, 8 * h, 8 * w), generator=g)
    # Latent sides not divisible by 2^upsamplers: the up blocks take the skips" sizes.
    r["odd_sample"] = torch.randn((1, 4, 6, 10), generator=g)
    added = dict(text_embeds=r["text_embeds"], time_ids=r["time_ids"])

    r["unet_plain"] = unet(r["sample"], r["timestep"], r["text"], added_cond_kwargs=added).sample
    r["unet_odd"] = unet(
        r["odd_sample"],
        r["timesteps"][:1],
        r["text"][:1],
        added_cond_kwargs=dict(text_embeds=r["text_embeds"][:1], time_ids=r["time_ids"][:1]),
    ).sample

    def run_cn(guess_mode):
        return controlnet(
            r["sample"],
            r["timestep"],
            encoder_hidden_states=r["face"],
            controlnet_cond=r["controlnet_cond"],
            conditioning_scale=CN_SCALE,
            added_cond_kwargs=added,
            guess_mode=guess_mode,
            return_dict=False,
        )

    down, mid = run_cn(False)
    for i, t in enumerate(down):
        r[f"cn_down_{i}"] = t
    r["cn_mid"] = mid
    g_down, g_mid = run_cn(True)
    for i, t in enumerate(g_down):
        r[f"cn_guess_down_{i}"] = t
    r["cn_guess_mid"] = g_mid

    r["unet_cn"] = unet(
        r["sample"],
        r["timesteps"],
        r["text"],
        added_cond_kwargs=added,
        down_block_additional_residuals=list(down),
        mid_block_additional_residual=mid,
    ).sample

    context = torch.cat([r["text"], r["face"]], dim=1)
    ip_unet = copy.deepcopy(unet)
    install_instantx(ip_unet, ip_state, IP_SCALE, FACE_TOKENS)
    r["unet_ip"] = ip_unet(r["sample"], r["timestep"], context, added_cond_kwargs=added).sample
    r["unet_ip_cn"] = ip_unet(
        r["sample"],
        r["timestep"],
        context,
        added_cond_kwargs=added,
        down_block_additional_residuals=list(down),
        mid_block_additional_residual=mid,
    ).sample

    check = copy.deepcopy(unet)
    install_diffusers_ip(check, ip_state, IP_SCALE, FACE_TOKENS)
    alt = check(r["sample"], r["timestep"], context, added_cond_kwargs=added).sample
    delta = (alt - r["unet_ip"]).abs().max().item()
    print(f"InstantX IPAttnProcessor2_0 vs diffusers IPAdapterAttnProcessor2_0: max |Δ| = {delta:.2e}")
    assert delta < 1e-5, delta
    assert (r["unet_ip"] - r["unet_plain"]).abs().max().item() > 1e-2, "the IP branch must matter"
    assert (r["unet_cn"] - r["unet_plain"]).abs().max().item() > 1e-2, "the residuals must matter"

    save_file({k: v.contiguous() for k, v in r.items()}, OUT / "refs.safetensors")
    (OUT / "released").mkdir()
    (OUT / "released/unet_config.json").write_text(json.dumps(RELEASED_UNET, indent=1) + "\n")
    (OUT / "released/identitynet_config.json").write_text(json.dumps(RELEASED_IDENTITYNET, indent=1) + "\n")
    unet_params, sdxl = released_params(UNet2DConditionModel, RELEASED_UNET)
    cn_params, _ = released_params(ControlNetModel, RELEASED_IDENTITYNET)
    meta = dict(
        ip_layers=layers,
        num_tokens=FACE_TOKENS,
        ip_scale=IP_SCALE,
        conditioning_scale=CN_SCALE,
        num_attn_processors=len(unet.attn_processors),
        released=dict(
            unet_params=unet_params,
            identitynet_params=cn_params,
            unet_ip_layers=ip_layer_list(sdxl, cross=RELEASED_UNET["cross_attention_dim"]),
        ),
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__, python=sys.version.split()[0]),
        ip_reference="InstantX IPAttnProcessor2_0 re-implemented from the spec; diffusers "
        f"IPAdapterAttnProcessor2_0 agrees to {delta:.1e}",
    )
    (OUT / "refs.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(layers)} IP layers; wrote {OUT.relative_to(REPO)} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
