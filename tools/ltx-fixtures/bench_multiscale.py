"""The diffusers side of `ltx-i2v bench pipeline --flow multiscale` (see README "Benchmark").

    python bench_multiscale.py make-model DIR    # tiny-but-not-trivial 0.9.7-style model + upsampler
    python bench_multiscale.py run DIR --height H --width W --frames F --steps-lowres N \
        --steps-refine M --seed S --repeat R

`make-model` saves a diffusers-format LTXConditionPipeline (0.9.5+ VAE layout, the 0.9.7
scheduler, random weights from fixed seeds, the fixtures' tokenizer) with a
`latent_upsampler/` beside it. `run` times the replaced service's multi-scale flow (diffusers
0.42.1 docs flow) on the CPU in float32 and prints one JSON object: per-stage seconds (text,
pass1, upsample, pass2, decode = VAE decode + postprocessing + the final Lanczos resize, total)
of the fastest of R runs. Needs the pinned packages of requirements.txt; runs offline.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_diffusers import TOKENIZER, reinit  # noqa: E402


def make_model(out: Path) -> None:
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler,
                           LTXConditionPipeline, LTXVideoTransformer3DModel)
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(str(TOKENIZER))
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=256, d_kv=32, num_heads=8,
                                 d_ff=512, num_layers=4, feed_forward_proj="gated-gelu",
                                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                 is_encoder_decoder=False)).eval()
    reinit(t5, 1)
    transformer = LTXVideoTransformer3DModel(in_channels=32, out_channels=32, num_attention_heads=8,
                                             attention_head_dim=32, cross_attention_dim=256,
                                             num_layers=4, caption_channels=256).eval()
    reinit(transformer, 2)
    vae = AutoencoderKLLTXVideo(latent_channels=32, block_out_channels=(32, 32, 64, 64, 128),
                                down_block_types=("LTXVideo095DownBlock3D",) * 4,
                                decoder_block_out_channels=(64, 128, 256),
                                layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, True, True),
                                decoder_spatio_temporal_scaling=(True, True, True),
                                decoder_inject_noise=(False, False, False, False),
                                downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                                upsample_residual=(True, True, True), upsample_factor=(2, 2, 2),
                                timestep_conditioning=True, patch_size=4, patch_size_t=1,
                                resnet_norm_eps=1e-6, scaling_factor=1.0, encoder_causal=True,
                                decoder_causal=False, spatial_compression_ratio=32,
                                temporal_compression_ratio=8).eval()
    reinit(vae, 3)
    upsampler = LTXLatentUpsamplerModel(in_channels=32, mid_channels=128, num_blocks_per_stage=2).eval()
    reinit(upsampler, 4)
    pipe = LTXConditionPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False),
                                vae=vae, text_encoder=t5, tokenizer=tokenizer, transformer=transformer)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    upsampler.save_pretrained(str(tmp / "latent_upsampler"), safe_serialization=True)
    (tmp / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, tmp / "tokenizer" / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def run(args) -> dict:
    from diffusers import LTXConditionPipeline, LTXLatentUpsamplePipeline
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    pipe = LTXConditionPipeline.from_pretrained(str(args.model), torch_dtype=torch.float32)
    ups = LTXLatentUpsamplerModel.from_pretrained(str(args.model / "latent_upsampler"))
    pipe_up = LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=ups)
    for p in (pipe, pipe_up):
        p.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
    condition = LTXVideoCondition(video=[image], frame_index=0)
    marks = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            marks[name] = marks.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    pipe.encode_prompt = timed("text", pipe.encode_prompt)
    pipe.vae.decode = timed("decode", pipe.vae.decode)
    pipe.video_processor.postprocess_video = timed("decode", pipe.video_processor.postprocess_video)
    prompt, negative = "a red ball bounces on a wooden table", "worst quality, inconsistent motion, blurry, jittery, distorted"
    best = None
    for _ in range(args.repeat):
        marks.clear()
        generator = torch.Generator().manual_seed(args.seed)
        dh, dw = int(args.height * 2 / 3), int(args.width * 2 / 3)
        dh, dw = dh - dh % 32, dw - dw % 32
        start = time.perf_counter()
        latents = pipe(conditions=[condition], prompt=prompt, negative_prompt=negative, width=dw, height=dh,
                       num_frames=args.frames, num_inference_steps=args.steps_lowres, generator=generator,
                       output_type="latent").frames
        t1 = time.perf_counter()
        up = pipe_up(latents=latents, output_type="latent").frames
        t2 = time.perf_counter()
        text_before = marks.get("text", 0.0)
        video = pipe(conditions=[condition], prompt=prompt, negative_prompt=negative, width=dw * 2,
                     height=dh * 2, num_frames=args.frames, denoise_strength=0.4,
                     num_inference_steps=args.steps_refine, latents=up, decode_timestep=0.05,
                     image_cond_noise_scale=0.025, generator=generator, output_type="pil").frames[0]
        t3 = time.perf_counter()
        r0 = time.perf_counter()
        video = [f.resize((args.width, args.height), Image.LANCZOS) for f in video]
        resize = time.perf_counter() - r0
        total = time.perf_counter() - start
        text2 = marks.get("text", 0.0) - text_before
        times = {
            "text": marks.get("text", 0.0),
            "pass1": (t1 - start) - text_before,
            "upsample": t2 - t1,
            "pass2": (t3 - t2) - text2 - marks.get("decode", 0.0),
            "decode": marks.get("decode", 0.0) + resize,
            "total": total,
        }
        if best is None or total < best["total"]:
            best = times
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "seconds": best}


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-model")
    mk.add_argument("dir", type=Path)
    rn = sub.add_parser("run")
    rn.add_argument("model", type=Path)
    for name, default in (("height", 256), ("width", 384), ("frames", 25), ("steps-lowres", 10),
                          ("steps-refine", 10), ("seed", 0), ("repeat", 1)):
        rn.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    if args.cmd == "make-model":
        make_model(args.dir)
        print(json.dumps({"model": str(args.dir)}))
    else:
        print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
