"""The diffusers side of `ltx-i2v bench pipeline` (see README "Benchmark").

    python bench_diffusers.py make-model DIR      # a tiny-but-not-trivial random LTX model
    python bench_diffusers.py run DIR --height H --width W --frames F --steps N --seed S --repeat R

`make-model` saves a diffusers-format LTXImageToVideoPipeline (0.9.1 layout, random weights
from fixed seeds, the fixtures' tokenizer) so Rust and diffusers run the same weights. `run`
times diffusers' LTXImageToVideoPipeline on the CPU in float32 and prints one JSON object:
per-stage seconds (text, image, denoise, decode, total) of the fastest of R runs.
Needs the pinned packages of requirements.txt; runs offline.
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "tests/fixtures/ltx/models/ltx-0.9.1/tokenizer"


def reinit(module, seed):
    """Every parameter from a seeded normal scaled by fan-in; norms near 1; VAE stats sane."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        named = list(module.named_parameters()) + [
            (n, b) for n, b in module.named_buffers() if n in ("latents_mean", "latents_std")
        ]
        for name, p in named:
            if name == "latents_std":
                new = torch.rand(p.shape, generator=g) + 0.5
            elif name.endswith("timestep_scale_multiplier"):
                new = torch.full(p.shape, 1000.0)
            elif "norm" in name and p.dim() == 1:
                new = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                new = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
            else:
                new = 0.05 * torch.randn(p.shape, generator=g)
            p.copy_(new.reshape(p.shape).to(p.dtype))


def make_model(out: Path) -> None:
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler,
                           LTXImageToVideoPipeline, LTXVideoTransformer3DModel)
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
    vae = AutoencoderKLLTXVideo(latent_channels=32, block_out_channels=(32, 64, 128, 128),
                                decoder_block_out_channels=(64, 128, 256),
                                layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, True, False),
                                decoder_spatio_temporal_scaling=(True, True, True),
                                decoder_inject_noise=(True, True, True, False),
                                upsample_residual=(True, True, True), upsample_factor=(2, 2, 2),
                                timestep_conditioning=True).eval()
    reinit(vae, 3)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096,
                                                shift_terminal=0.1)
    pipe = LTXImageToVideoPipeline(scheduler=scheduler, vae=vae, text_encoder=t5, tokenizer=tokenizer,
                                   transformer=transformer)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    # Hub-like tokenizer folder: spiece.model, no tokenizer.json.
    (tmp / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, tmp / "tokenizer" / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def run(args) -> dict:
    from diffusers import LTXImageToVideoPipeline

    torch.set_num_threads(torch.get_num_threads())
    pipe = LTXImageToVideoPipeline.from_pretrained(str(args.model), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
    marks = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            marks[name] = marks.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    # Stage boundaries as ltx-i2v draws them: image = preprocessing + encode + latents,
    # decode = VAE decode + conversion to [0, 1] frames; denoise is the rest of the call.
    pipe.encode_prompt = timed("text", pipe.encode_prompt)
    pipe.video_processor.preprocess = timed("image", pipe.video_processor.preprocess)
    pipe.prepare_latents = timed("image", pipe.prepare_latents)
    pipe.vae.decode = timed("decode", pipe.vae.decode)
    pipe.video_processor.postprocess_video = timed("decode", pipe.video_processor.postprocess_video)
    best = None
    for _ in range(args.repeat):
        marks.clear()
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        pipe(image=image, prompt="a red ball bounces on a wooden table", negative_prompt="",
             height=args.height, width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
             guidance_scale=3.0, decode_timestep=0.05, decode_noise_scale=0.025,
             generator=torch.Generator().manual_seed(args.seed), output_type="np")
        total = time.perf_counter() - start
        times = dict(marks, total=total)
        times["denoise"] = total - sum(times.get(k, 0.0) for k in ("text", "image", "decode"))
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
    for name, default in (("height", 256), ("width", 384), ("frames", 25), ("steps", 10), ("seed", 0), ("repeat", 1)):
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
