#!/usr/bin/env python3
"""An SDXL single-file checkpoint (the `sd_xl_base_1.0.safetensors` layout) of a tiny random
SDXL, plus the diffusers folder it came from, proven with diffusers' own conversion.

Usage (from the repository root; run by hand, nothing runs it automatically):

    /tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_single_file.py

Versions: torch 2.11.0 (CPU), diffusers 0.42.1, transformers 5.23.0, safetensors. No downloads.
Deterministic: CPU, float32, fixed seeds; running it twice gives byte-identical files.

Writes tests/fixtures/sdxl/single_file/:
- folder/: a diffusers SDXL folder (`model_index.json`, `scheduler/`, `unet/`, `vae/`,
  `text_encoder/`, `text_encoder_2/`, configs and safetensors weights) of random models with
  SDXL's block structure at a tiny width. The tokenizers are left out (`[null, null]` in
  `model_index.json`; the real vocabulary is 1.5 MB). `text_encoder/model.safetensors` carries
  the `text_model.` prefix as the released SDXL folder does (transformers 5 writes the
  `CLIPTextModel` without it; it loads either).
- sdxl_tiny.safetensors: the same weights under the original (Stability `sgm`) names:
  `model.diffusion_model.*` (LDM UNet: `input_blocks`/`middle_block`/`output_blocks`),
  `first_stage_model.*` (LDM VAE, 1x1-conv attention), `conditioner.embedders.0.transformer.*`
  (CLIP-L in transformers layout, with the int64 `position_ids` buffer) and
  `conditioner.embedders.1.model.*` (OpenCLIP bigG: fused `attn.in_proj_weight`/`_bias`,
  `positional_embedding`, `text_projection` as [width, projection]), plus the non-weight
  entries real files carry: `conditioner.embedders.1.model.logit_scale` and `denoiser.sigmas`.
  The names come from this script's inverse of diffusers' tables (`DIFFUSERS_TO_LDM_MAPPING`,
  `convert_ldm_*`, `convert_open_clip_checkpoint`).
- refs.safetensors: fixed inputs and each component's outputs (UNet with SDXL's text_time
  conditioning, VAE decode, both encoders' penultimate hidden state and pooled output).
- refs.json: tensor counts per component, the converted names diffusers drops or passes through,
  and the model type diffusers infers.

Proof (the script fails otherwise): `infer_diffusers_model_type` says `xl_base`;
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint` and
`convert_open_clip_checkpoint` give back every tensor of the folder, bit for bit, and nothing
else (CLIP-L's `position_ids` aside, which transformers 5 does not keep); and
`StableDiffusionXLPipeline.from_single_file(file, config=folder, local_files_only=True)` builds
components whose state dicts equal the folder's.
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "sdxl" / "single_file"
FOLDER = OUT / "folder"
FILE = OUT / "sdxl_tiny.safetensors"

SEED = 900
LPB = 2  # layers_per_block: SDXL's, so the LDM block numbers are the released ones

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."
OPEN_CLIP = "conditioner.embedders.1.model."


def reinit(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights, every one nonzero and distinct, so a swapped or misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                new = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() >= 2:
                new = torch.randn(p.shape, generator=g) / math.sqrt(math.prod(p.shape[1:]))
            else:
                new = 0.05 * torch.randn(p.shape, generator=g)
            p.copy_(new)


def models():
    l_cfg = CLIPTextConfig(
        vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=8,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    # bigG's shape at a tiny width: >= 10 layers (diffusers' SDXL detection key is
    # resblocks.9), a width other than CLIP-L's (diffusers tells the encoders apart by the
    # position embedding's width) and a projection other than the width (the transpose shows).
    g_cfg = CLIPTextConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=10, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=12,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(4, 8, 8), layers_per_block=LPB, attention_head_dim=(1, 2, 2),
        transformer_layers_per_block=(1, 1, 2), cross_attention_dim=8 + 16, norm_num_groups=4,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12 + 6 * 4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 8, 8, 8), layers_per_block=2,
        latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.13025, force_upcast=True,
    )
    te = CLIPTextModel(l_cfg)
    te2 = CLIPTextModelWithProjection(g_cfg)
    for i, m in enumerate((unet, vae, te, te2)):
        reinit(m, SEED + i)
        m.eval()
    return unet, vae, te, te2


# ---- diffusers name -> original name (the inverse of diffusers' converters) ----

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
          ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
# diffusers name -> LDM name
UNET_LAYERS = {**sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}


def unet_original(name: str, has_attention: list[bool]) -> str:
    if name in UNET_LAYERS:
        return UNET_LAYERS[name]
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        kind, b, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if part == "resnets":
            for new, old in RESNET:
                rest = rest.replace(new, old)
        block = "input_blocks" if kind == "down" else "output_blocks"
        i = 1 + b * (LPB + 1) + j if kind == "down" else b * (LPB + 1) + j
        return f"{block}.{i}.{0 if part == 'resnets' else 1}.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", name)
    if m:
        return f"input_blocks.{(int(m.group(1)) + 1) * (LPB + 1)}.0.op.{m.group(2)}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", name)
    if m:
        b = int(m.group(1))
        return f"output_blocks.{b * (LPB + 1) + LPB}.{2 if has_attention[b] else 1}.conv.{m.group(2)}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        part, j, rest = m.group(1), int(m.group(2)), m.group(3)
        if part == "resnets":
            for new, old in RESNET:
                rest = rest.replace(new, old)
            return f"middle_block.{2 * j}.{rest}"
        return f"middle_block.1.{rest}"
    raise ValueError(f"UNet name without an original: {name}")


VAE_TOP = dict(sfu.DIFFUSERS_TO_LDM_MAPPING["vae"])
VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def vae_original(name: str, t: torch.Tensor, blocks: int) -> tuple[str, torch.Tensor]:
    if name in VAE_TOP:
        return VAE_TOP[name], t
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        side, part, j, rest = m.groups()
        if part == "resnets":
            return f"{side}.mid.block_{int(j) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}", t
        for new, old in VAE_ATTN:
            rest = rest.replace(new, old)
        # the original attention is 1x1 convolutions
        return f"{side}.mid.attn_1.{rest}", (t[:, :, None, None] if t.dim() == 2 else t)
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)", name)
    if m:
        i, rest = m.group(1), m.group(4)
        if m.group(3) is not None:
            return f"encoder.down.{i}.block.{m.group(3)}.{rest.replace('conv_shortcut', 'nin_shortcut')}", t
        return f"encoder.down.{i}.downsample.{rest}", t
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", name)
    if m:
        i, rest = blocks - 1 - int(m.group(1)), m.group(4)
        if m.group(3) is not None:
            return f"decoder.up.{i}.block.{m.group(3)}.{rest.replace('conv_shortcut', 'nin_shortcut')}", t
        return f"decoder.up.{i}.upsample.{rest}", t
    raise ValueError(f"VAE name without an original: {name}")


OPEN_CLIP_TOP = dict(sfu.DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"])
OPEN_CLIP_LAYER = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                   ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]


def open_clip_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in sd.items():
        if name in OPEN_CLIP_TOP:
            out[OPEN_CLIP_TOP[name]] = t.T.contiguous() if name == "text_projection.weight" else t
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", name)
        if not m:
            raise ValueError(f"CLIP-G name without an original: {name}")
        i, rest = m.groups()
        q = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if q:
            fused.setdefault(f"transformer.resblocks.{i}.attn.in_proj_{q.group(2)}", {})[q.group(1)] = t
            continue
        for new, old in OPEN_CLIP_LAYER:
            rest = rest.replace(new, old)
        out[f"transformer.resblocks.{i}.{rest}"] = t
    for name, parts in fused.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# ---- checks ----


def same(what: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{what}: missing {missing[:5]}, extra {extra[:5]}"
    for k, v in want.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype, f"{what}: {k} {got[k].shape} vs {v.shape}"
        assert torch.equal(got[k], v), f"{what}: {k} differs"


def write_folder(unet, vae, te, te2) -> None:
    unet.save_pretrained(FOLDER / "unet", safe_serialization=True)
    vae.save_pretrained(FOLDER / "vae", safe_serialization=True)
    te.save_pretrained(FOLDER / "text_encoder", safe_serialization=True)
    te2.save_pretrained(FOLDER / "text_encoder_2", safe_serialization=True)
    # The released layout of text_encoder/ (transformers 4 wrote `text_model.*`).
    te_sd = {("text_model." + k if not k.startswith("text_model.") else k): v.contiguous()
             for k, v in te.state_dict().items()}
    save_file(te_sd, str(FOLDER / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False,
    ).save_pretrained(FOLDER / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": [None, None],
        "tokenizer_2": [None, None],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (FOLDER / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def single_file(unet, vae, te, te2) -> dict[str, torch.Tensor]:
    has_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    ckpt: dict[str, torch.Tensor] = {}
    for k, v in unet.state_dict().items():
        ckpt[UNET + unet_original(k, has_attention)] = v
    blocks = len(vae.config.up_block_types)
    for k, v in vae.state_dict().items():
        name, t = vae_original(k, v, blocks)
        ckpt[VAE + name] = t
    for k, v in te.state_dict().items():
        ckpt[CLIP_L + ("text_model." + k if not k.startswith("text_model.") else k)] = v
    ckpt[CLIP_L + "text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    for k, v in open_clip_original(te2.state_dict()).items():
        ckpt[OPEN_CLIP + k] = v
    ckpt[OPEN_CLIP + "logit_scale"] = torch.tensor(math.log(1 / 0.07))
    ckpt["denoiser.sigmas"] = torch.linspace(0.03, 14.6, 1000)
    return {k: v.contiguous().clone() for k, v in sorted(ckpt.items())}


def prove(ckpt, unet, vae, te, te2):
    model_type = sfu.infer_diffusers_model_type(ckpt)
    assert model_type == "xl_base", model_type

    same("UNet", sfu.convert_ldm_unet_checkpoint(ckpt, dict(unet.config)), unet.state_dict())
    same("VAE", sfu.convert_ldm_vae_checkpoint(ckpt, dict(vae.config)), vae.state_dict())
    clip_l = sfu.convert_ldm_clip_checkpoint(ckpt)
    assert torch.equal(clip_l.pop("text_model.embeddings.position_ids"), torch.arange(77)[None])
    same("CLIP-L", {k.removeprefix("text_model."): v for k, v in clip_l.items()}, te.state_dict())
    same("CLIP-G", sfu.convert_open_clip_checkpoint(te2, ckpt, prefix=OPEN_CLIP), te2.state_dict())

    pipe = StableDiffusionXLPipeline.from_single_file(str(FILE), config=str(FOLDER), local_files_only=True)
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", te), ("text_encoder_2", te2)):
        same(f"from_single_file {name}", getattr(pipe, name).state_dict(), model.state_dict())
    assert pipe.tokenizer is None and pipe.tokenizer_2 is None

    claimed = {UNET: "unet", VAE: "vae", CLIP_L: "text_encoder", OPEN_CLIP: "text_encoder_2"}
    counts = {c: sum(k.startswith(p) for k in ckpt) for p, c in claimed.items()}
    return pipe, {
        "diffusers_model_type": model_type,
        "file_tensors": len(ckpt),
        "file_tensors_per_prefix": counts,
        "folder_tensors": {n: len(m.state_dict()) for n, m in
                           (("unet", unet), ("vae", vae), ("text_encoder", te), ("text_encoder_2", te2))},
        "non_weights": ["conditioner.embedders.1.model.logit_scale", "denoiser.sigmas"],
        "buffers_passed_through": [CLIP_L + "text_model.embeddings.position_ids"],
        "fused_in_proj": sum(k.endswith((".in_proj_weight", ".in_proj_bias")) for k in ckpt),
    }


def outputs(unet, vae, te, te2) -> dict[str, torch.Tensor]:
    """Each component's output on fixed inputs, run by the components from_single_file built."""
    g = torch.Generator().manual_seed(SEED + 10)
    r = {
        "sample": torch.randn(2, 4, 8, 8, generator=g),
        "timestep": torch.tensor([500.0, 31.0]),
        "encoder_hidden_states": torch.randn(2, 5, 24, generator=g),
        "text_embeds": torch.randn(2, 12, generator=g),
        "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [48.0, 64.0, 8.0, 0.0, 64.0, 64.0]]),
        "latents": torch.randn(1, 4, 4, 4, generator=g),
        "input_ids": torch.cat([torch.tensor([[0]]), torch.randint(3, 100, (1, 7), generator=g),
                                torch.tensor([[2]]), torch.ones(1, 68, dtype=torch.int64)], dim=1),
    }
    with torch.no_grad():
        r["unet_out"] = unet(r["sample"], r["timestep"], r["encoder_hidden_states"], added_cond_kwargs={
            "text_embeds": r["text_embeds"], "time_ids": r["time_ids"]}).sample
        r["decoded"] = vae.decode(r["latents"]).sample
        one = te(r["input_ids"], output_hidden_states=True)
        r["te_penultimate"], r["te_pooled"] = one.hidden_states[-2], one.pooler_output
        two = te2(r["input_ids"], output_hidden_states=True)
        r["te2_penultimate"], r["te2_text_embeds"] = two.hidden_states[-2], two.text_embeds
    return {k: v.contiguous() for k, v in r.items()}


def main() -> None:
    assert torch.__version__.startswith("2.11.0"), torch.__version__
    assert diffusers.__version__ == "0.42.1", diffusers.__version__
    assert transformers.__version__ == "5.23.0", transformers.__version__
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)

    unet, vae, te, te2 = models()
    if OUT.exists():
        shutil.rmtree(OUT)
    FOLDER.mkdir(parents=True)
    write_folder(unet, vae, te, te2)
    ckpt = single_file(unet, vae, te, te2)
    save_file(ckpt, str(FILE), metadata={"format": "pt"})
    pipe, refs = prove(ckpt, unet, vae, te, te2)
    save_file(outputs(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2), str(OUT / "refs.safetensors"))
    (OUT / "refs.json").write_text(json.dumps(refs, indent=2, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT.relative_to(ROOT)} ({total / 1024:.0f} KiB); diffusers' conversion agrees")
    assert total < 2 * 1024 * 1024, total


if __name__ == "__main__":
    main()
