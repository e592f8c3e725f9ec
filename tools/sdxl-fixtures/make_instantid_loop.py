#!/usr/bin/env python3
"""A whole InstantID denoising loop on tiny random models, as InstantX's pipeline runs it, for
crates/pipelines/tests/instantid_loop.rs (and crates/models/tests/sdxl_folder.rs).

Usage, by hand, from the repository root (CPU only, nothing is downloaded; the CLIP vocabulary
comes from tests/fixtures/sdxl/clip/tokenizer, made by make_clip.py):

    /tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_instantid_loop.py

Versions: Python 3.11, torch 2.11.0 (CPU), diffusers 0.42.1, transformers 5.23.0, Pillow 13
(the venv of tools/ltx-fixtures/requirements.txt). Deterministic: fixed seeds, float32, one
thread; running it twice writes the same numbers.

Writes tests/fixtures/sdxl/instantid/ (wiped first), laid out as users have the models:
- sdxl/: `StableDiffusionXLPipeline.save_pretrained` of tiny random components whose sizes fit
  together as SDXL's do: text_encoder (CLIPTextModel, hidden 4) + text_encoder_2
  (CLIPTextModelWithProjection, hidden 6, projection 6) → cross_attention_dim 10; pooled 6 +
  6 × addition_time_embed_dim 4 = projection_class_embeddings_input_dim 30; a UNet with SDXL's
  block structure (9 skip tensors); a 4-level AutoencoderKL (scaling 0.13025, force_upcast);
  SDXL base 1.0's EulerDiscreteScheduler config. The text encoders need CLIP's 49,408-row
  embedding tables, so they ship as fp16 variant files only (`model.fp16.safetensors`, as an
  fp16-only download has them); the reference loads them with `variant="fp16"` in float32.
  tokenizer*/: the configs of make_clip.py's folders, vocab.json / merges.txt symlinked to them.
- ControlNetModel/: the IdentityNet (`ControlNetModel.from_unet`, conditioning_channels 3,
  every weight random including the zero convolutions), as InstantX ships it.
- ip-adapter.bin: real `torch.save` of {"image_proj": Resampler, "ip_adapter": {n}.to_k_ip /
  to_v_ip in `unet.attn_processors` order}; the Resampler in InstantX's layout (dim 64, 1 head,
  depth 2, 4 queries, face embedding 32, output 10, ff_mult 2).
- scheduler_ancestral/scheduler_config.json: EulerAncestralDiscreteScheduler from the same
  config (for the case that draws noise in every step).
- README.md; refs.safetensors + refs.json: per case, the inputs (face embedding, keypoint image uint8) and
  the intermediates: prompt_embeds / pooled ([negative; positive] with CFG), face_tokens,
  control_image, time_ids, init_latents, unet_out_0 (the first UNet call), noise_pred_0 (after
  guidance), cn_mid_0, latents_{i} after each step, image (float [H, W, 3] in [0, 1]),
  image_u8 ([H, W, 3]) and rng_after (the next 8 draws of the seeded generator).

The reference is `InstantIdReference`, a subclass of diffusers' StableDiffusionXLControlNetPipeline
as InstantX's pipeline is one: encode_prompt, prepare_image, prepare_latents, _get_add_time_ids,
prepare_extra_step_kwargs and the image processor are diffusers' own; `__call__` is written here
from ../shared/specs/instantid.md §3 (face tokens from the Resampler on [zeros, embedding], the
ControlNet with the face tokens as context, the UNet with cat[text, face] and the residuals, CFG,
scheduler step, fp32 VAE decode, postprocess). The IP attention is make_unet.py's re-implementation
of InstantX's IPAttnProcessor2_0 (cross-checked there against diffusers'), installed as InstantX's
set_ip_adapter does; the Resampler below is checked against make_ip_adapter.py's.
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    ControlNetModel,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_ip_adapter  # noqa: E402
from make_schedulers import SDXL_BASE  # noqa: E402
from make_unet import InstantXAttnProcessor2_0, InstantXIPAttnProcessor2_0, hidden_size_of  # noqa: E402
from make_unet import ip_layer_list, randomize  # noqa: E402

REPO = HERE.parents[1]
OUT = REPO / "tests/fixtures/sdxl/instantid"
CLIP_TOKENIZERS = REPO / "tests/fixtures/sdxl/clip"

TE1_HIDDEN, TE2_HIDDEN, POOLED, TIME_DIM = 4, 6, 6, 4
CROSS = TE1_HIDDEN + TE2_HIDDEN
FACE_EMBED, FACE_TOKENS = 32, 4
RESAMPLER = dict(dim=64, depth=2, heads=1, queries=FACE_TOKENS, embedding_dim=FACE_EMBED, output_dim=CROSS, ff_mult=2)

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 8, 16),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    transformer_layers_per_block=(1, 2, 2),
    attention_head_dim=(1, 2, 2),
    cross_attention_dim=CROSS,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM,
    norm_num_groups=4,
    flip_sin_to_cos=True,
    freq_shift=0,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 8, 8),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
    scaling_factor=0.13025,
    force_upcast=True,
)


def clip_config(hidden, act, projection):
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=projection,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=0,
        eos_token_id=2,  # as SDXL's configs: pooled at argmax(input_ids)
        pad_token_id=1,
    )


class PerceiverAttention(nn.Module):
    """InstantX's Resampler attention (spec §1.2), sizes as arguments."""

    def __init__(self, dim, heads, dim_head=64):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm1(x), self.norm2(latents)
        b, lq, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=-2)).chunk(2, dim=-1)

        def split(t):
            return t.view(b, -1, self.heads, self.dim_head).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        s = 1 / math.sqrt(math.sqrt(self.dim_head))
        w = ((q * s) @ (k * s).transpose(-2, -1)).float().softmax(dim=-1).to(q.dtype)
        return self.to_out((w @ v).transpose(1, 2).reshape(b, lq, -1))


class Resampler(nn.Module):
    def __init__(self, dim, depth, heads, queries, embedding_dim, output_dim, ff_mult):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        ff = lambda: nn.Sequential(  # noqa: E731
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * ff_mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * ff_mult, dim, bias=False),
        )
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, heads), ff()]) for _ in range(depth))

    @staticmethod
    def of_state_dict(sd):
        """The Resampler whose sizes these tensors have, loaded strictly."""
        queries, dim = sd["latents"].shape[1:]
        depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
        r = Resampler(dim, depth, dim // 64, queries, sd["proj_in.weight"].shape[1], sd["proj_out.weight"].shape[0],
                      sd["layers.0.1.1.weight"].shape[0] // dim)
        r.load_state_dict(sd, strict=True)
        return r

    def forward(self, x):
        latents = self.latents.repeat(x.size(0), 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def check_resampler_against_make_ip_adapter():
    m = make_ip_adapter
    torch.manual_seed(5)
    theirs = m.Resampler().eval()
    ours = Resampler(m.DIM, m.DEPTH, m.DIM // m.DIM_HEAD, m.QUERIES, m.EMBED, m.OUTPUT, m.FF_MULT).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, m.EMBED)
    delta = (ours(x) - theirs(x)).abs().max().item()
    assert delta == 0.0, delta


def install_face_adapter(unet, ip_state, num_tokens):
    """InstantX's set_ip_adapter: AttnProcessor2_0 on attn1, IPAttnProcessor2_0 on attn2, the
    weights loaded strictly into the ModuleList of all processors (scale 0.5 at load)."""
    procs = {}
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor"):
            procs[name] = InstantXAttnProcessor2_0()
        else:
            cross = unet.config.cross_attention_dim
            procs[name] = InstantXIPAttnProcessor2_0(hidden_size_of(unet, name), cross, 0.5, num_tokens)
    unet.set_attn_processor(procs)
    nn.ModuleList(unet.attn_processors.values()).load_state_dict(ip_state, strict=True)


class InstantIdReference(StableDiffusionXLControlNetPipeline):
    """diffusers' SDXL ControlNet pipeline with InstantID's face path (spec §3), recording the
    intermediates. Single ControlNet, one image per prompt, no guess mode, control guidance
    0 → 1, as InstantX's defaults."""

    def set_face(self, resampler, ip_state):
        self.image_proj_model = resampler
        install_face_adapter(self.unet, ip_state, resampler.latents.shape[1])

    def set_ip_adapter_scale(self, scale):
        for p in self.unet.attn_processors.values():
            if isinstance(p, InstantXIPAttnProcessor2_0):
                p.scale = scale

    def encode_face(self, image_embeds, cfg):
        emb = torch.as_tensor(image_embeds).reshape([1, -1, self.image_proj_model.proj_in.in_features])
        if cfg:
            emb = torch.cat([torch.zeros_like(emb), emb], dim=0)
        return self.image_proj_model(emb).to(self.unet.dtype)

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt, image_embeds, image, height, width, steps, guidance_scale,
                 controlnet_conditioning_scale, ip_adapter_scale, generator, record):
        self._guidance_scale = guidance_scale
        cfg = self.do_classifier_free_guidance
        self.set_ip_adapter_scale(ip_adapter_scale)
        device = torch.device("cpu")
        pe, npe, pooled, npooled = self.encode_prompt(
            prompt, None, device, 1, cfg, negative_prompt, None)
        face = self.encode_face(image_embeds, cfg)
        image = self.prepare_image(image, width, height, 1, 1, device, self.controlnet.dtype, cfg)
        height, width = image.shape[-2:]
        self.scheduler.set_timesteps(steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(1, self.unet.config.in_channels, height, width, pe.dtype, device, generator)
        record["init_latents"] = latents
        extra = self.prepare_extra_step_kwargs(generator, 0.0)
        time_ids = self._get_add_time_ids(tuple(image.shape[-2:]), (0, 0), (height, width), dtype=pe.dtype,
                                          text_encoder_projection_dim=self.text_encoder_2.config.projection_dim)
        if cfg:
            pe = torch.cat([npe, pe])
            pooled = torch.cat([npooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        record.update(prompt_embeds=pe, pooled=pooled, face_tokens=face, control_image=image, time_ids=time_ids)
        context = torch.cat([pe, face], dim=1)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        for i, t in enumerate(timesteps):
            x = torch.cat([latents] * 2) if cfg else latents
            x = self.scheduler.scale_model_input(x, t)
            down, mid = self.controlnet(x, t, encoder_hidden_states=face, controlnet_cond=image,
                                        conditioning_scale=controlnet_conditioning_scale, guess_mode=False,
                                        added_cond_kwargs=added, return_dict=False)
            noise_pred = self.unet(x, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid, added_cond_kwargs=added, return_dict=False)[0]
            if i == 0:
                record["unet_out_0"], record["cn_mid_0"] = noise_pred, mid
            if cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)
            if i == 0:
                record["noise_pred_0"] = noise_pred
            latents = self.scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
            record[f"latents_{i}"] = latents
        decoded = self.vae.decode(latents.to(torch.float32) / self.vae.config.scaling_factor, return_dict=False)[0]
        image_np = self.image_processor.postprocess(decoded, output_type="np")
        record["image"] = torch.from_numpy(image_np[0])
        record["image_u8"] = torch.from_numpy(np.array(self.image_processor.numpy_to_pil(image_np)[0]))


def keypoint_image(w, h):
    """A draw_kps-like picture: four limbs at level 153 and five filled circles on black."""
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    pts = [(0.35 * w, 0.38 * h), (0.65 * w, 0.36 * h), (0.5 * w, 0.55 * h), (0.38 * w, 0.72 * h), (0.62 * w, 0.73 * h)]
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    for a in (0, 1, 3, 4):
        c = tuple(int(v * 0.6) for v in colours[a])
        d.line([pts[a], pts[2]], fill=c, width=4)
    for (x, y), c in zip(pts, colours):
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
    return img


def write_tokenizers(root, link=True):
    for name in ("tokenizer", "tokenizer_2"):
        (root / name).mkdir()
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(CLIP_TOKENIZERS / name / f, root / name / f)
        for f in ("vocab.json", "merges.txt"):
            if link:
                (root / name / f).symlink_to(Path("../../../clip/tokenizer") / f)
            else:
                shutil.copyfile(CLIP_TOKENIZERS / "tokenizer" / f, root / name / f)


def build_models():
    torch.manual_seed(0)
    te1 = CLIPTextModel(clip_config(TE1_HIDDEN, "quick_gelu", TE1_HIDDEN)).eval()
    te2 = CLIPTextModelWithProjection(clip_config(TE2_HIDDEN, "gelu", POOLED)).eval()
    randomize(te1, 10)
    randomize(te2, 11)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    randomize(unet, 12)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(4, 8, 8, 16), load_weights_from_unet=False).eval()
    randomize(controlnet, 13)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    randomize(vae, 14)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.5)  # keep most decoded pixels inside [-1, 1]
    torch.manual_seed(15)
    resampler = Resampler(**RESAMPLER).eval()
    with torch.no_grad():
        for name, p in resampler.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(16)
    ip_state = {}
    for layer in ip_layer_list(unet, cross=CROSS):
        for kind in ("to_k_ip", "to_v_ip"):
            w = torch.randn((layer["query_dim"], CROSS), generator=g) / CROSS**0.5
            ip_state[f"{layer['n']}.{kind}.weight"] = w
    return te1, te2, unet, controlnet, vae, resampler, ip_state


def save_folders(out, te1, te2, unet, controlnet, vae, resampler, ip_state, fixture=True):
    """The model set in `out` as users have it. `fixture`: tokenizer files symlinked to
    make_clip.py's and fp16-only text encoders (small); else copies and float32 files."""
    root = out / "sdxl"
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZERS / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(CLIP_TOKENIZERS / "tokenizer_2")
    scheduler = EulerDiscreteScheduler.from_config(SDXL_BASE)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False)
    pipe.save_pretrained(root, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(root / name)
    write_tokenizers(root, link=fixture)
    if fixture:
        for name, te in (("text_encoder", te1), ("text_encoder_2", te2)):
            shutil.rmtree(root / name)
            te.to(torch.float16).save_pretrained(root / name, variant="fp16", safe_serialization=True)
            te.to(torch.float32)
    controlnet.save_pretrained(out / "ControlNetModel", safe_serialization=True)
    image_proj = {k: v.detach().clone() for k, v in resampler.state_dict().items()}
    torch.save({"image_proj": image_proj, "ip_adapter": ip_state}, out / "ip-adapter.bin")
    EulerAncestralDiscreteScheduler.from_config(SDXL_BASE).save_config(out / "scheduler_ancestral")


def load_reference(out, te_variant="fp16"):
    """The pipeline from the files in `out`, as a user would load them (float32)."""
    root = out / "sdxl"
    f32 = torch.float32
    pipe = InstantIdReference(
        vae=AutoencoderKL.from_pretrained(root / "vae", torch_dtype=f32),
        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder", variant=te_variant, dtype=f32),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            root / "text_encoder_2", variant=te_variant, dtype=f32),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(root / "tokenizer_2"),
        unet=UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=f32),
        controlnet=ControlNetModel.from_pretrained(out / "ControlNetModel", torch_dtype=f32),
        scheduler=EulerDiscreteScheduler.from_pretrained(root / "scheduler"),
        add_watermarker=False,
    )
    assert getattr(pipe, "watermark", None) is None
    ckpt = torch.load(out / "ip-adapter.bin", map_location="cpu")
    resampler = Resampler.of_state_dict(ckpt["image_proj"]).eval()
    pipe.set_face(resampler, ckpt["ip_adapter"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


README = """# InstantID fixtures (diffusers 0.42.1, transformers 5.23.0, torch 2.11.0; tiny random models)

Made by `tools/sdxl-fixtures/make_instantid_loop.py` (its docstring says what each file holds and
how the reference loop is computed); checked by `crates/models/tests/sdxl_folder.rs` and
`crates/pipelines/tests/instantid_loop.rs`. Regenerate by hand from the repository root:

```sh
/tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_instantid_loop.py
```

Laid out as users have the models: `sdxl/` (a diffusers SDXL folder; its text encoders ship only
fp16 variant files), `ControlNetModel/` and `ip-adapter.bin` (InstantX's checkpoints folder).
`sdxl/tokenizer*/vocab.json` and `merges.txt` are relative symlinks to `../clip/tokenizer/`.
"""


CASES = {
    # CFG with a negative prompt, SDXL base's Euler; the keypoint image is resized (Lanczos).
    "euler_cfg": dict(prompt="a photo of a woman, film grain", negative_prompt="lowres, watermark", height=64,
                      width=48, kps=(40, 56), steps=3, guidance_scale=5.0, controlnet_conditioning_scale=0.8,
                      ip_adapter_scale=0.8, seed=42, scheduler="sdxl/scheduler"),
    # Euler ancestral (a draw every step), negative None → zeros (force_zeros_for_empty_prompt).
    "ancestral_zero_negative": dict(prompt="portrait of a man!! in the rain", negative_prompt=None, height=48,
                                    width=64, kps=(64, 48), steps=3, guidance_scale=3.5,
                                    controlnet_conditioning_scale=1.0, ip_adapter_scale=0.5, seed=7,
                                    scheduler="scheduler_ancestral"),
    # guidance ≤ 1: no CFG, batch 1.
    "euler_no_cfg": dict(prompt="a child smiling", negative_prompt="ugly", height=40, width=40, kps=(40, 40),
                         steps=2, guidance_scale=1.0, controlnet_conditioning_scale=0.6, ip_adapter_scale=1.0,
                         seed=1234, scheduler="sdxl/scheduler"),
}


def main() -> None:
    assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__
    assert diffusers.__version__ == "0.42.1", diffusers.__version__
    assert transformers.__version__ == "5.23.0", transformers.__version__
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    check_resampler_against_make_ip_adapter()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    models = build_models()
    save_folders(OUT, *models)
    pipe = load_reference(OUT)

    refs, meta = {}, {}
    g = torch.Generator().manual_seed(100)
    for name, case in CASES.items():
        cls = EulerDiscreteScheduler if case["scheduler"].startswith("sdxl") else EulerAncestralDiscreteScheduler
        pipe.scheduler = cls.from_pretrained(OUT / case["scheduler"])
        face = torch.randn((1, FACE_EMBED), generator=g) * 1.5
        kps = keypoint_image(*case["kps"])
        generator = torch.Generator().manual_seed(case["seed"])
        record = {}
        pipe(case["prompt"], case["negative_prompt"], face, kps, case["height"], case["width"], case["steps"],
             case["guidance_scale"], case["controlnet_conditioning_scale"], case["ip_adapter_scale"], generator,
             record)
        record["rng_after"] = torch.randn(8, generator=generator)
        record["face_embedding"] = face
        record["kps"] = torch.from_numpy(np.array(kps))
        inside = ((record["image"] > 0) & (record["image"] < 1)).float().mean().item()
        assert inside > 0.5, f"{name}: only {inside:.0%} of the pixels are unclamped"
        for k, v in record.items():
            refs[f"{name}.{k}"] = v.contiguous().clone()
        meta[name] = {k: v for k, v in case.items() if k != "kps"}
        meta[name].update(kps_size=list(case["kps"]), unclamped_fraction=round(inside, 3),
                          timesteps=[float(t) for t in pipe.scheduler.timesteps])
        print(f"{name}: image {tuple(record['image'].shape)}, {inside:.0%} unclamped, "
              f"final |latents| max {record['latents_%d' % (case['steps'] - 1)].abs().max():.2f}")

    save_file(refs, OUT / "refs.safetensors")
    meta = dict(
        cases=meta,
        face_tokens=FACE_TOKENS,
        face_embedding_dim=FACE_EMBED,
        resampler=RESAMPLER,
        ip_layers=ip_layer_list(pipe.unet, cross=CROSS),
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                      transformers=transformers.__version__, pillow=PIL.__version__,
                      python=sys.version.split()[0]),
        reference="InstantIdReference(StableDiffusionXLControlNetPipeline), tools/sdxl-fixtures/make_instantid_loop.py",
    )
    (OUT / "refs.json").write_text(json.dumps(meta, indent=1) + "\n")
    (OUT / "README.md").write_text(README)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"wrote {OUT.relative_to(REPO)} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
