"""The diffusers side of `ltx-i2v bench instantid`.

    python bench_instantid.py make-model DIR   # a tiny-but-not-trivial random InstantID set
    python bench_instantid.py run DIR --height H --width W --steps N --seed S --repeat R

`make-model` writes an SDXL diffusers folder (DIR/sdxl), DIR/ControlNetModel and
DIR/ip-adapter.bin with SDXL's structure at reduced widths (random weights from fixed seeds,
the real CLIP vocabulary from tests/fixtures/sdxl/clip), so Rust and diffusers load the same
files. `run` times make_instantid_loop.py's InstantIdReference (diffusers 0.42.1's
StableDiffusionXLControlNetPipeline with InstantID's face path) on the CPU in float32 and prints
one JSON object: per-stage seconds (text, image, denoise, decode, total) of the fastest of R runs.
Versions: torch 2.11.0, diffusers 0.42.1, transformers 5.23.0 (tools/ltx-fixtures/requirements.txt);
runs offline.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_instantid_loop as mil  # noqa: E402

TE1, TE2, POOLED, TIME_DIM = 64, 128, 128, 32
CROSS = TE1 + TE2
UNET = dict(
    mil.UNET_CONFIG,
    block_out_channels=(32, 64, 128),
    attention_head_dim=(1, 2, 4),
    cross_attention_dim=CROSS,
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM,
    norm_num_groups=32,
    sample_size=32,
)
VAE = dict(mil.VAE_CONFIG, block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=32)
RESAMPLER = dict(dim=256, depth=4, heads=4, queries=16, embedding_dim=512, output_dim=CROSS, ff_mult=4)


def clip(hidden, act, projection):
    cfg = mil.clip_config(hidden, act, projection)
    cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size = 4, 4, 4 * hidden
    return cfg


def make_model(out: Path) -> None:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    te1 = CLIPTextModel(clip(TE1, "quick_gelu", TE1)).eval()
    te2 = CLIPTextModelWithProjection(clip(TE2, "gelu", POOLED)).eval()
    mil.randomize(te1, 1)
    mil.randomize(te2, 2)
    unet = UNet2DConditionModel(**UNET).eval()
    mil.randomize(unet, 3)
    controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False).eval()
    mil.randomize(controlnet, 4)
    vae = AutoencoderKL(**VAE).eval()
    mil.randomize(vae, 5)
    torch.manual_seed(6)
    resampler = mil.Resampler(**RESAMPLER).eval()
    g = torch.Generator().manual_seed(7)
    ip_state = {}
    for layer in mil.ip_layer_list(unet, cross=CROSS):
        for kind in ("to_k_ip", "to_v_ip"):
            w = torch.randn((layer["query_dim"], CROSS), generator=g) / CROSS**0.5
            ip_state[f"{layer['n']}.{kind}.weight"] = w
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mil.save_folders(tmp, te1, te2, unet, controlnet, vae, resampler, ip_state, fixture=False)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def run(args) -> dict:
    pipe = mil.load_reference(args.model, te_variant=None)
    marks = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            marks[name] = marks.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    # Stage boundaries as ltx-i2v draws them: image = face tokens + control image + initial
    # latents; decode = VAE decode + conversion to the float and PIL images.
    pipe.encode_prompt = timed("text", pipe.encode_prompt)
    pipe.encode_face = timed("image", pipe.encode_face)
    pipe.prepare_image = timed("image", pipe.prepare_image)
    pipe.prepare_latents = timed("image", pipe.prepare_latents)
    pipe.vae.decode = timed("decode", pipe.vae.decode)
    pipe.image_processor.postprocess = timed("decode", pipe.image_processor.postprocess)
    pipe.image_processor.numpy_to_pil = timed("decode", pipe.image_processor.numpy_to_pil)
    face = torch.randn((1, 512), generator=torch.Generator().manual_seed(args.seed))
    kps = mil.keypoint_image(args.width, args.height)
    best = None
    for _ in range(args.repeat):
        marks.clear()
        start = time.perf_counter()
        pipe("a portrait of a woman, film grain", "lowres, watermark", face, kps, args.height, args.width,
             args.steps, 5.0, 0.8, 0.8, torch.Generator().manual_seed(args.seed), {})
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
    for name, default in (("height", 256), ("width", 256), ("steps", 10), ("seed", 0), ("repeat", 1)):
        rn.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    mil.diffusers_logging.set_verbosity_error()
    mil.transformers_logging.set_verbosity_error()
    if args.cmd == "make-model":
        make_model(args.dir)
        print(json.dumps({"model": str(args.dir)}))
    else:
        print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
