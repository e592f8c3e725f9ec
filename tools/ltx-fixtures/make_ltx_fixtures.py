#!/usr/bin/env python3
"""Build tiny LTX-Video reference fixtures with diffusers 0.42.1 (CPU, float32, fixed seeds).

Usage (from the repository root, inside a venv built from tools/ltx-fixtures/requirements.txt):

    python tools/ltx-fixtures/make_ltx_fixtures.py

Everything is written into tests/fixtures/ltx/ (the folder is wiped first). Nothing is downloaded:
the tokenizer is a sentencepiece model trained here on TRAIN_TEXT, and every model is randomly
initialised from fixed seeds. See tests/fixtures/ltx/README.md for what each file holds.
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("GLOG_minloglevel", "2")

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXImageToVideoPipeline,
    LTXVideoTransformer3DModel,
)
from diffusers.pipelines.ltx import pipeline_ltx_image2video as i2v_module  # noqa: E402
from diffusers.pipelines.ltx.pipeline_ltx_image2video import calculate_shift  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers import T5Config, T5EncoderModel, T5Tokenizer, T5TokenizerFast  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "ltx"
REFS = OUT / "refs"
MODELS = OUT / "models"
TOKENIZER_DIR = OUT / "tokenizer"

EXPECTED_VERSIONS = {
    "torch": "2.11.0",
    "diffusers": "0.42.1",
    "transformers": "5.23.0",
    "tokenizers": "0.23.3",
    "sentencepiece": "0.2.3",
}

MAX_SEQ = 128  # max_sequence_length used by the LTX pipelines
SP_VOCAB = 500  # sentencepiece pieces; the T5 vocab adds 100 <extra_id_*> tokens on top
EXTRA_IDS = 100

# Seeds (all fixed; recorded in the JSON files too).
SEED_SPM = 1234
SEED_CONSTRUCT = 0
SEED_T5_INIT = 101
SEED_TRANSFORMER_INIT = 202
SEED_VAE_INIT = {"0.9.0": 300, "0.9.1": 301, "0.9.5": 305}
SEED_TRANSFORMER_INPUTS = 404
SEED_VAE_IMAGE = 505
SEED_VAE_LATENTS = 506
SEED_VAE_POSTERIOR_SAMPLE = 507
SEED_VAE_DECODE_GLOBAL = 508

VARIANTS = ["0.9.0", "0.9.1", "0.9.5"]

# A small English text for the tokenizer. Plain ASCII plus a handful of accented words, so that
# some accented characters are known pieces and others (and CJK, emoji) map to <unk>.
TRAIN_TEXT = """\
A red ball bounces on a wooden table while the camera slowly pans to the left.
The video shows a quiet street at night, lit by warm orange lamps and the glow of shop windows.
A woman with long brown hair walks along the beach at sunset, and the waves crash against the rocks.
Close-up of a cup of coffee on a table in a small cafe; steam rises and drifts away.
The camera follows a cyclist riding through a green forest on a narrow dirt path.
A dog runs across a field of tall grass, chasing a yellow frisbee thrown by a child.
Snow falls gently over a mountain village; smoke curls from the chimneys of the houses.
A man in a blue jacket reads a newspaper on a park bench as pigeons gather around his feet.
Time-lapse of clouds moving over a city skyline, with the sun setting behind tall buildings.
An old car drives down a desert highway, leaving a trail of dust behind it.
The scene is bright and colorful, with soft light, high detail, and a shallow depth of field.
A cat sleeps on a windowsill while rain streams down the glass outside.
Two friends laugh and talk at a table in a busy restaurant, plates of food in front of them.
A slow aerial shot of a river winding through a valley covered in autumn trees.
The waves roll onto the shore, and the water sparkles in the afternoon sun.
A chef chops vegetables in a kitchen; the knife moves quickly across the cutting board.
Fireworks explode over the harbor at midnight, reflected in the dark water below.
A little girl blows bubbles in the garden, and the bubbles float up into the blue sky.
The train moves through the countryside, passing farms, fields, and small towns.
A candle flickers on a wooden desk next to an open book and a pair of glasses.
In 2024 the festival had 3 stages, 12 bands and about 4500 visitors; tickets cost 35 dollars.
The clock shows 10:30, and the temperature is 21.5 degrees; the road is 8 km long.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2025 3.14 42.
Punctuation test: hello, world! really? yes... no; maybe: (this) [that] {other} "quoted" 'single' - dash / slash.
A naive visitor orders a cafe au lait and a creme brulee at a cafe in Paris: cafe, naive, resume.
Le cafe est petit. Un resume naif. The word cafe is also written café, and naive as naïve.
Cinematic lighting, realistic textures, smooth motion, natural colors, and a steady camera.
The camera zooms in on the face of an old man who smiles and looks at the horizon.
A bird flies over the lake and lands on a branch near the water.
The sky turns pink and purple as the sun goes down behind the hills.
People walk across a wide square in the rain, holding umbrellas of many colors.
A boat sails across the calm sea under a clear sky, with seagulls flying overhead.
A young boy kicks a soccer ball across a muddy field while his friends cheer from the side.
Sunlight filters through the leaves of tall oak trees, casting long shadows on the ground.
An astronaut floats inside a space station, looking out of a round window at the Earth.
A horse gallops along the shore, splashing through shallow water as the tide comes in.
The street market is crowded with people buying fruit, bread, cheese, and fresh flowers.
A jazz musician plays the saxophone on a dimly lit stage, surrounded by a quiet audience.
Heavy rain pours onto a busy intersection; cars stop at the red light and wipers swing.
A painter adds bright strokes of paint to a large canvas in a studio full of sunlight.
Steam trains puff white smoke as they cross an old stone bridge over a deep gorge.
A family eats dinner together at a long table, passing dishes and sharing stories.
The lighthouse beam sweeps across the dark ocean while a storm gathers on the horizon.
A hummingbird hovers near a red flower, its wings moving too fast to see clearly.
Skaters glide across a frozen pond, their scarves fluttering in the cold winter wind.
A waterfall tumbles down a cliff into a clear pool surrounded by green ferns and moss.
The city wakes up: shop owners open their doors, buses arrive, and people rush to work.
A robot with glowing eyes walks slowly through an empty warehouse filled with boxes.
Golden wheat sways in the breeze as a tractor moves across the field under a wide sky.
A dancer spins on a wooden stage, her red dress swirling around her in slow motion.
Thick fog rolls over the hills at dawn, and a lone tree stands on the highest ridge.
A kitten plays with a ball of yarn on a soft carpet next to a warm fireplace.
Children build a sandcastle on the beach, decorating it with shells and small stones.
The northern lights shimmer green and violet above a snowy forest and a frozen lake.
A surfer rides a huge wave, carving through the water as spray flies into the air.
Old books line the shelves of a quiet library where a student writes notes by lamp light.
A hot air balloon rises slowly over a patchwork of fields in the early morning light.
Traffic flows along a highway at night, leaving streaks of white and red light.
A group of hikers climbs a rocky trail toward the summit, breathing hard in the thin air.
Bees move from flower to flower in a sunny meadow full of purple lavender.
A baker pulls fresh loaves of bread from a stone oven, and flour dust drifts in the light.
An elephant sprays water over its back at a muddy watering hole on the savanna.
A violinist performs on a street corner while people stop to listen and drop coins.
The moon rises over a calm bay, and its reflection stretches across the quiet water.
"""

TOKENIZER_PROMPTS = [
    "",
    "A red ball bounces on a wooden table.",
    "Hello, world!!! Really?! (yes) -- no; ok: \"quoted\" 'single' [x] {y} #hash @at & 100% ~tilde~ <angle>",
    "In 2024, 3.14159 x 42 = 131.95; call 555-0123 at 10:30pm, 1,000,000 pixels and 1e-6.",
    "Café naïve résumé, Zürich, São Paulo, crème brûlée; ﬁne ① ＡＢＣ Straße 日本語 😀 Ωmega",
    "   leading   and    repeated\twhitespace\n\nwith   newlines   and trailing spaces   ",
    "Quixotic flibbertigibbet xylophones juxtapose zephyrs; kvetching wombats hypothesize.",
    " ".join(
        [
            "The camera follows a cyclist riding through a green forest on a narrow dirt path, then pans to a lake",
            "where a boat sails under a clear sky while seagulls fly overhead and the sun sets behind the hills.",
        ]
        * 6
    ),
    "UPPERCASE lowercase MiXeD CaSe WoRdS",
]

T5_PROMPTS = [
    "A red ball bounces on a wooden table.",
    "Waves crash against the rocks at sunset, cinematic lighting, high detail.",
]

PIPELINE_PROMPT = "A red ball bounces on a wooden table while the camera slowly pans to the left."
PIPELINE_NEGATIVE = "blurry, low quality, distorted"


# ----------------------------------------------------------------------------------------------
# helpers


def log(msg: str) -> None:
    print(msg, flush=True)


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


def floats(t) -> list:
    """Full-precision float list; non-finite values become null (bits are stored separately)."""
    arr = np.asarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t, dtype=np.float64).reshape(-1)
    return [float(v) if math.isfinite(v) else None for v in arr]


def f32_bits_list(t) -> list:
    arr = np.asarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t, dtype=np.float32).reshape(-1)
    return [int(v) for v in arr.view(np.uint32)]


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)
        fh.write("\n")


def save_tensors(path: Path, tensors: dict) -> None:
    out = {}
    for k, v in tensors.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = v.detach().cpu().contiguous().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))


def shapes(tensors: dict) -> dict:
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in tensors.items()}


def tensor_stats(t: torch.Tensor) -> str:
    t = t.detach().float()
    return f"mean {t.mean().item():+.4f} std {t.std().item():.4f} min {t.min().item():+.4f} max {t.max().item():+.4f}"


@contextlib.contextmanager
def record_global_randn(store: list):
    """Record every torch.randn call made with the global (unseeded-generator) RNG."""
    orig = torch.randn

    def wrapped(*args, **kwargs):
        out = orig(*args, **kwargs)
        if kwargs.get("generator") is None:
            store.append(out.detach().clone())
        return out

    torch.randn = wrapped
    try:
        yield
    finally:
        torch.randn = orig


# ----------------------------------------------------------------------------------------------
# 1. tokenizer


def slow_t5_ids(sp: spm.SentencePieceProcessor, text: str) -> tuple[list, list]:
    """What the sentencepiece-backed (transformers 4.x, legacy) T5Tokenizer produces for text
    without special tokens: sp pieces, truncated to max_len-1, then </s> (id 1), padded with 0."""
    ids = list(sp.encode(text))[: MAX_SEQ - 1] + [1]
    mask = [1] * len(ids) + [0] * (MAX_SEQ - len(ids))
    ids = ids + [0] * (MAX_SEQ - len(ids))
    return ids, mask


def build_tokenizer(notes: dict) -> T5Tokenizer:
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    # Train from an in-memory iterator into an in-memory writer, so that no temporary path ends up
    # in the model's trainer_spec (the file is then byte-identical across runs).
    model_bytes = io.BytesIO()
    spm.set_random_generator_seed(SEED_SPM)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN_TEXT.splitlines()),
        model_writer=model_bytes,
        vocab_size=SP_VOCAB,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        byte_fallback=False,
        minloglevel=2,
    )
    with tempfile.TemporaryDirectory() as td:
        src = Path(td)
        (src / "spiece.model").write_bytes(model_bytes.getvalue())
        # transformers 5.x has no sentencepiece-backed T5 tokenizer: T5Tokenizer is the
        # tokenizers-backed class (T5TokenizerFast is an alias) and converts spiece.model on load.
        tok = T5Tokenizer.from_pretrained(str(src), extra_ids=EXTRA_IDS, model_max_length=MAX_SEQ)
        tok.save_pretrained(str(TOKENIZER_DIR))
    (TOKENIZER_DIR / "spiece.model").write_bytes(model_bytes.getvalue())
    write_special_tokens_map(TOKENIZER_DIR, tok)

    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER_DIR / "spiece.model"))
    reloaded = T5Tokenizer.from_pretrained(str(TOKENIZER_DIR))
    fast_alias = T5TokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    raw = tokenizers.Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))

    kw = dict(padding="max_length", max_length=MAX_SEQ, truncation=True, add_special_tokens=True)
    ids_all, mask_all, per_prompt = [], [], []
    mismatches = []
    for i, text in enumerate(TOKENIZER_PROMPTS):
        enc = reloaded(text, **kw)
        ids, mask = list(enc.input_ids), list(enc.attention_mask)
        enc_conv = tok(text, **kw)
        enc_alias = fast_alias(text, **kw)
        slow_ids, slow_mask = slow_t5_ids(sp, text)
        raw_ids = raw.encode(text).ids
        n = sum(mask)
        raw_trunc = raw_ids[: MAX_SEQ - 1] + [1] if len(raw_ids) > MAX_SEQ else raw_ids
        agree = {
            "converted_vs_reloaded": list(enc_conv.input_ids) == ids,
            "T5TokenizerFast_alias": list(enc_alias.input_ids) == ids,
            "sentencepiece_slow_emulation": slow_ids == ids and slow_mask == mask,
            "raw_tokenizers_json_unpadded": raw_trunc == ids[:n],
        }
        if not all(agree.values()):
            mismatches.append({"index": i, "agree": agree, "hf": ids[:n], "slow": slow_ids[: sum(slow_mask)]})
        ids_all.append(ids)
        mask_all.append(mask)
        per_prompt.append(
            {
                "index": i,
                "text": text,
                "num_real_tokens_incl_eos": n,
                "untruncated_sentencepiece_len_excl_eos": len(sp.encode(text)),
                "pieces": reloaded.convert_ids_to_tokens(ids[:n]),
                "agree": agree,
            }
        )
    save_tensors(
        REFS / "tokenizer.safetensors",
        {
            "input_ids": torch.tensor(ids_all, dtype=torch.int64),
            "attention_mask": torch.tensor(mask_all, dtype=torch.int64),
        },
    )
    write_json(
        REFS / "tokenizer.json",
        {
            "prompts": TOKENIZER_PROMPTS,
            "per_prompt": per_prompt,
            "call": {
                "padding": "max_length",
                "max_length": MAX_SEQ,
                "truncation": True,
                "add_special_tokens": True,
            },
            "len_tokenizer": len(reloaded),
            "sentencepiece_vocab_size": sp.get_piece_size(),
            "special_ids": {
                "pad": reloaded.pad_token_id,
                "eos": reloaded.eos_token_id,
                "unk": reloaded.unk_token_id,
                "<extra_id_0>": reloaded.convert_tokens_to_ids("<extra_id_0>"),
                "<extra_id_99>": reloaded.convert_tokens_to_ids("<extra_id_99>"),
            },
            "sentencepiece_training": {
                "vocab_size": SP_VOCAB,
                "model_type": "unigram",
                "character_coverage": 1.0,
                "num_threads": 1,
                "random_generator_seed": SEED_SPM,
                "ids": "pad 0, eos 1, unk 2, no bos",
                "normalization_rule_name": "nmt_nfkc (default)",
            },
            "all_implementations_agree": not mismatches,
            "mismatches": mismatches,
        },
    )
    notes["tokenizer_mismatches"] = mismatches
    log(f"tokenizer: len {len(reloaded)}, {len(TOKENIZER_PROMPTS)} prompts, mismatches: {len(mismatches)}")
    return reloaded


def write_special_tokens_map(folder: Path, tok) -> None:
    """transformers 5.x no longer writes special_tokens_map.json; write the 4.x/hub-style one."""
    write_json(
        folder / "special_tokens_map.json",
        {
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "additional_special_tokens": [f"<extra_id_{i}>" for i in range(EXTRA_IDS)],
        },
    )


# ----------------------------------------------------------------------------------------------
# 2. tiny models


def t5_config(vocab_size: int) -> T5Config:
    return T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


TRANSFORMER_CONFIG = dict(
    in_channels=8,
    out_channels=8,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=2,
    attention_head_dim=16,
    cross_attention_dim=32,
    num_layers=2,
    activation_fn="gelu-approximate",
    qk_norm="rms_norm_across_heads",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    caption_channels=32,
    attention_bias=True,
    attention_out_bias=True,
)

# Tiny VAEs mirroring the structure of the real configs (scripts/convert_ltx_to_diffusers.py):
#   0.9.0: block_out (128,256,512,512), layers (4,3,3,3,4), no timestep conditioning
#   0.9.1: decoder_block_out (256,512,1024), decoder layers (5,6,7,8), noise (T,T,T,F), residual, factor 2
#   0.9.5: block_out (128,256,512,1024,2048), 095 down blocks, layers (4,6,6,2,2), decoder (5,5,5,5)
VAE_CONFIGS = {
    "0.9.0": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(4, 8, 16, 16),
        decoder_block_out_channels=(4, 8, 16, 16),
        layers_per_block=(1, 2, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 2, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        patch_size=4,
        patch_size_t=1,
        resnet_norm_eps=1e-6,
        scaling_factor=1.0,
        encoder_causal=True,
        decoder_causal=False,
        timestep_conditioning=False,
    ),
    "0.9.1": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(4, 8, 16, 16),
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 2, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 2, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(True, True, True, False),
        downsample_type=("conv", "conv", "conv", "conv"),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=True,
        patch_size=4,
        patch_size_t=1,
        resnet_norm_eps=1e-6,
        scaling_factor=1.0,
        encoder_causal=True,
        decoder_causal=False,
    ),
    "0.9.5": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(2, 4, 8, 16, 32),
        down_block_types=("LTXVideo095DownBlock3D",) * 4,
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 2, 1, 1, 1),
        decoder_layers_per_block=(1, 2, 1, 1),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=True,
        patch_size=4,
        patch_size_t=1,
        resnet_norm_eps=1e-6,
        scaling_factor=1.0,
        encoder_causal=True,
        decoder_causal=False,
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    ),
}

# Scheduler configs: 0.9.0/0.9.1 hub scheduler_config.json, and the 0.9.5 conversion-script one.
SCHEDULER_CONFIGS = {
    "0.9.1-hub": dict(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    ),
    "0.9.5": dict(use_dynamic_shifting=False),
}
SCHEDULER_FOR_VARIANT = {"0.9.0": "0.9.1-hub", "0.9.1": "0.9.1-hub", "0.9.5": "0.9.5"}


def reinit_(module: torch.nn.Module, seed: int, rules) -> dict:
    """Re-draw every parameter (and latents_mean/std) from a fixed-seed generator.

    rules(name, tensor) -> (kind, value_tensor) decides the distribution."""
    g = torch.Generator().manual_seed(seed)
    summary = {}
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + [
            (n, b) for n, b in module.named_buffers() if n in ("latents_mean", "latents_std")
        ]:
            kind, new = rules(name, p, g)
            p.copy_(new.to(p.dtype).reshape(p.shape))
            summary.setdefault(kind, 0)
            summary[kind] += p.numel()
    return summary


def randn(shape, g, std=1.0, mean=0.0):
    return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean


def fan_in(p: torch.Tensor) -> int:
    return int(np.prod(p.shape[1:])) if p.dim() >= 2 else p.numel()


def t5_rules(name, p, g):
    if name.endswith("shared.weight") or name.endswith("embed_tokens.weight"):
        return "embedding N(0,1)", randn(p.shape, g, 1.0)
    if "relative_attention_bias" in name:
        return "rel-pos bias N(0,0.5)", randn(p.shape, g, 0.5)
    if "layer_norm" in name:
        return "norm weight 1+N(0,0.1)", randn(p.shape, g, 0.1, 1.0)
    if p.dim() >= 2:
        return "linear N(0,1/fan_in)", randn(p.shape, g, 1.0 / math.sqrt(fan_in(p)))
    raise ValueError(f"unhandled T5 parameter {name}")


def transformer_rules(name, p, g):
    if name.endswith("scale_shift_table"):
        return "scale_shift_table N(0,0.2)", randn(p.shape, g, 0.2)
    if ".norm_q." in name or ".norm_k." in name:
        return "qk-norm weight 1+N(0,0.1)", randn(p.shape, g, 0.1, 1.0)
    if name.endswith(".bias"):
        return "bias N(0,0.05)", randn(p.shape, g, 0.05)
    if p.dim() >= 2:
        return "linear N(0,1/fan_in)", randn(p.shape, g, 1.0 / math.sqrt(fan_in(p)))
    raise ValueError(f"unhandled transformer parameter {name}")


def vae_rules(name, p, g):
    if name == "latents_mean":
        return "latents_mean N(0,0.1)", randn(p.shape, g, 0.1)
    if name == "latents_std":
        return "latents_std U(0.5,1.5)", torch.rand(p.shape, generator=g) + 0.5
    if name.endswith("timestep_scale_multiplier"):
        return "timestep_scale_multiplier U(600,1000)", torch.rand(p.shape, generator=g) * 400.0 + 600.0
    if name.endswith("scale_shift_table"):
        return "scale_shift_table N(0,0.2)", randn(p.shape, g, 0.2)
    if "per_channel_scale" in name:
        return "per_channel_scale N(0,0.2)", randn(p.shape, g, 0.2)
    if ".norm3.weight" in name:
        return "layernorm weight 1+N(0,0.1)", randn(p.shape, g, 0.1, 1.0)
    if name.endswith(".bias"):
        return "bias N(0,0.05)", randn(p.shape, g, 0.05)
    if name == "decoder.conv_out.conv.weight":
        # halved so that fewer decoded pixels saturate in the [-1,1] -> [0,1] clamp
        return "decoder conv_out N(0,0.25/fan_in)", randn(p.shape, g, 0.5 / math.sqrt(fan_in(p)))
    if p.dim() >= 2:
        return "conv/linear N(0,1/fan_in)", randn(p.shape, g, 1.0 / math.sqrt(fan_in(p)))
    raise ValueError(f"unhandled VAE parameter {name}")


def build_models(tokenizer, notes: dict) -> None:
    torch.manual_seed(SEED_CONSTRUCT)
    text_encoder = T5EncoderModel(t5_config(len(tokenizer))).eval()
    notes["t5_init"] = reinit_(text_encoder, SEED_T5_INIT, t5_rules)

    torch.manual_seed(SEED_CONSTRUCT)
    transformer = LTXVideoTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    notes["transformer_init"] = reinit_(transformer, SEED_TRANSFORMER_INIT, transformer_rules)

    notes["vae_init"] = {}
    for variant in VARIANTS:
        torch.manual_seed(SEED_CONSTRUCT)
        vae = AutoencoderKLLTXVideo(**VAE_CONFIGS[variant]).eval()
        notes["vae_init"][variant] = reinit_(vae, SEED_VAE_INIT[variant], vae_rules)
        scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIGS[SCHEDULER_FOR_VARIANT[variant]])
        pipe = LTXImageToVideoPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
        folder = MODELS / f"ltx-{variant}"
        pipe.save_pretrained(str(folder), safe_serialization=True)
        # Hub-like tokenizer folder (Lightricks/LTX-Video ships spiece.model, no tokenizer.json):
        # drop the tokenizer.json transformers 5.x wrote (it is in tests/fixtures/ltx/tokenizer/),
        # so from_pretrained converts spiece.model on load, as it does for the real checkpoints.
        (folder / "tokenizer" / "tokenizer.json").unlink()
        shutil.copy(TOKENIZER_DIR / "spiece.model", folder / "tokenizer" / "spiece.model")
        write_special_tokens_map(folder / "tokenizer", tokenizer)
        n_params = sum(p.numel() for p in vae.parameters())
        log(f"saved {folder.relative_to(REPO)} (vae params {n_params})")


def load_pipe(variant: str) -> LTXImageToVideoPipeline:
    pipe = LTXImageToVideoPipeline.from_pretrained(str(MODELS / f"ltx-{variant}"))
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.vae, pipe.transformer, pipe.text_encoder):
        m.eval()
    return pipe


# ----------------------------------------------------------------------------------------------
# 3. references


def ref_t5(pipe) -> None:
    tok = pipe.tokenizer(
        T5_PROMPTS,
        padding="max_length",
        max_length=MAX_SEQ,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = pipe.text_encoder(tok.input_ids)[0]
    tensors = {
        "input_ids": tok.input_ids.to(torch.int64),
        "attention_mask": tok.attention_mask.to(torch.int64),
        "last_hidden_state": hidden.float(),
    }
    save_tensors(REFS / "t5.safetensors", tensors)
    write_json(
        REFS / "t5.json",
        {
            "model": "models/ltx-*/text_encoder (identical in all three folders)",
            "prompts": T5_PROMPTS,
            "note": "last_hidden_state = text_encoder(input_ids)[0] with NO attention_mask, as the pipeline does",
            "tensors": shapes(tensors),
        },
    )
    log(f"t5: last_hidden_state {tensor_stats(hidden)}")


def ref_transformer(pipe) -> None:
    g = torch.Generator().manual_seed(SEED_TRANSFORMER_INPUTS)
    B, Fr, H, W, C, L = 2, 2, 3, 4, TRANSFORMER_CONFIG["in_channels"], 16
    S = Fr * H * W
    hidden = torch.randn(B, S, C, generator=g)
    enc = torch.randn(B, L, TRANSFORMER_CONFIG["caption_channels"], generator=g)
    mask = torch.ones(B, L)
    mask[1, 10:] = 0.0
    timestep = torch.zeros(B, S)
    timestep[0, H * W :] = 700.0
    timestep[1, H * W :] = 350.0
    frame_rate = 25
    rope_scale = (8 / frame_rate, 32, 32)
    with torch.no_grad():
        out = pipe.transformer(
            hidden_states=hidden,
            encoder_hidden_states=enc,
            timestep=timestep,
            encoder_attention_mask=mask,
            num_frames=Fr,
            height=H,
            width=W,
            rope_interpolation_scale=rope_scale,
            return_dict=False,
        )[0]
    tensors = {
        "hidden_states": hidden,
        "encoder_hidden_states": enc,
        "encoder_attention_mask": mask,
        "timestep": timestep,
        "sample": out.float(),
    }
    save_tensors(REFS / "transformer.safetensors", tensors)
    write_json(
        REFS / "transformer.json",
        {
            "model": "models/ltx-*/transformer (identical in all three folders)",
            "num_frames": Fr,
            "height": H,
            "width": W,
            "frame_rate": frame_rate,
            "rope_interpolation_scale": list(rope_scale),
            "rope_interpolation_scale_expr": "(8 / 25, 32, 32) as python floats",
            "input_seed": SEED_TRANSFORMER_INPUTS,
            "note": (
                "hidden_states then encoder_hidden_states drawn with torch.randn from one Generator; "
                "encoder_attention_mask is float 1/0 (the pipeline passes a bool mask; the model only uses "
                "(1 - mask.to(dtype)) * -10000); timestep is per token [B,S], first latent frame = 0"
            ),
            "tensors": shapes(tensors),
        },
    )
    log(f"transformer: sample {tensor_stats(out)}")


def smooth_video(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, 3, 3, 8, 8, generator=g)
    vid = F.interpolate(low, size=(9, 64, 64), mode="trilinear", align_corners=True)
    hi = torch.randn(1, 3, 9, 64, 64, generator=g) * 0.05
    return torch.tanh(vid * 0.8 + hi).clamp(-1.0, 1.0).contiguous()


def ref_vae(variant: str, pipe) -> None:
    vae = pipe.vae
    image = smooth_video(SEED_VAE_IMAGE)
    z = torch.randn(1, VAE_CONFIGS[variant]["latent_channels"], 2, 2, 2, generator=torch.Generator().manual_seed(SEED_VAE_LATENTS))
    tensors = {"image": image, "decode_latents": z}
    meta = {
        "model": f"models/ltx-{variant}/vae",
        "image_seed": SEED_VAE_IMAGE,
        "decode_latents_seed": SEED_VAE_LATENTS,
        "timestep_conditioning": bool(vae.config.timestep_conditioning),
        "latents_mean": floats(vae.latents_mean),
        "latents_std": floats(vae.latents_std),
        "spatial_compression_ratio": vae.spatial_compression_ratio,
        "temporal_compression_ratio": vae.temporal_compression_ratio,
    }
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        tensors["posterior_mean"] = dist.mean
        tensors["posterior_logvar"] = dist.logvar
        tensors["posterior_std"] = dist.std
        tensors["posterior_sample"] = dist.sample(generator=torch.Generator().manual_seed(SEED_VAE_POSTERIOR_SAMPLE))
        meta["posterior_sample_seed"] = SEED_VAE_POSTERIOR_SAMPLE
        meta["posterior_sample_note"] = (
            "latent_dist.sample(torch.Generator().manual_seed(seed)) = mean + std * torch.randn(mean.shape, generator)"
        )
        if vae.config.timestep_conditioning:
            temb = torch.tensor([0.05])
            drawn: list = []
            torch.manual_seed(SEED_VAE_DECODE_GLOBAL)
            with record_global_randn(drawn):
                dec = vae.decode(z, temb=temb).sample
            tensors["decoded_temb"] = dec
            tensors["decode_temb"] = temb
            meta["decoded_temb_call"] = "torch.manual_seed(decode_global_seed); vae.decode(decode_latents, temb=torch.tensor([0.05])).sample"
            meta["decode_temb_value"] = 0.05
            meta["decode_global_seed"] = SEED_VAE_DECODE_GLOBAL
            meta["timestep_scale_multiplier"] = float(vae.decoder.timestep_scale_multiplier.item())
            meta["timestep_scale_multiplier_f32_bits"] = f32_bits(vae.decoder.timestep_scale_multiplier.item())
            meta["injected_noise_draws"] = [list(t.shape) for t in drawn]
            for i, t in enumerate(drawn):
                tensors[f"injected_noise_{i:02d}"] = t
            if drawn:
                # Cross-check: the decoder consumed exactly these global draws in this order.
                torch.manual_seed(SEED_VAE_DECODE_GLOBAL)
                again = [torch.randn(t.shape) for t in drawn]
                assert all(torch.equal(a, b) for a, b in zip(again, drawn))
        else:
            dec = vae.decode(z, temb=None).sample
            tensors["decoded"] = dec
            meta["decoded_call"] = "vae.decode(decode_latents, temb=None).sample"
    save_tensors(REFS / f"vae_{variant}.safetensors", tensors)
    meta["tensors"] = shapes(tensors)
    write_json(REFS / f"vae_{variant}.json", meta)
    log(f"vae {variant}: posterior mean {tensor_stats(tensors['posterior_mean'])}; decoded {tensor_stats(dec)}")


def ref_scheduler() -> None:
    out = {"pipeline_expr": {
        "sigmas": "np.linspace(1.0, 1 / N, N)",
        "mu": "calculate_shift(seq_len, cfg.get('base_image_seq_len', 256), cfg.get('max_image_seq_len', 4096), cfg.get('base_shift', 0.5), cfg.get('max_shift', 1.15))",
        "call": "scheduler.set_timesteps(sigmas=sigmas, mu=mu)",
    }, "configs": {}}
    for name, cfg_kwargs in SCHEDULER_CONFIGS.items():
        sched = FlowMatchEulerDiscreteScheduler(**cfg_kwargs)
        cfg = sched.config
        cases = []
        for n in [1, 2, 3, 10, 50]:
            for seq in [256, 1024, 4096, 7392, 20000]:
                sigmas_in = np.linspace(1.0, 1 / n, n)
                mu = calculate_shift(
                    seq,
                    cfg.get("base_image_seq_len", 256),
                    cfg.get("max_image_seq_len", 4096),
                    cfg.get("base_shift", 0.5),
                    cfg.get("max_shift", 1.15),
                )
                with np.errstate(divide="ignore", invalid="ignore"):
                    sched.set_timesteps(sigmas=sigmas_in, mu=mu)
                cases.append(
                    {
                        "num_inference_steps": n,
                        "seq_len": seq,
                        "mu": float(mu),
                        "input_sigmas": [float(v) for v in sigmas_in],
                        "sigmas": floats(sched.sigmas),
                        "sigmas_f32_bits": f32_bits_list(sched.sigmas),
                        "timesteps": floats(sched.timesteps),
                        "timesteps_f32_bits": f32_bits_list(sched.timesteps),
                        "has_nan": bool(torch.isnan(sched.sigmas).any() or torch.isnan(sched.timesteps).any()),
                    }
                )
        out["configs"][name] = {
            "constructor_kwargs": cfg_kwargs,
            "config": {k: (sorted(v) if k == "_use_default_values" else v) for k, v in dict(cfg).items()},
            "used_by": [v for v, s in SCHEDULER_FOR_VARIANT.items() if s == name],
            "cases": cases,
        }
    write_json(REFS / "scheduler.json", out)
    log("scheduler: done")


def make_input_image() -> np.ndarray:
    h = w = 64
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * (x / (w - 1))
    gch = 255 * (y / (h - 1))
    b = 127.5 + 127.5 * np.sin((x + y) / 9.0)
    img = np.stack([r, gch, b], axis=-1)
    disc = (x - 40) ** 2 + (y - 22) ** 2 <= 11**2
    img[disc] = [250, 240, 30]
    rect = (x >= 8) & (x < 26) & (y >= 38) & (y < 56)
    img[rect] = [20, 30, 200]
    stripe = (np.abs(x - y) < 1.5)
    img[stripe] = [255, 255, 255]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


PIPELINE_RUNS = [
    dict(name="0.9.0", variant="0.9.0", num_inference_steps=2, guidance_scale=3.0, guidance_rescale=0.0,
         decode_timestep=0.0, decode_noise_scale=None, seed=1000, global_seed=2000),
    dict(name="0.9.0_steps3", variant="0.9.0", num_inference_steps=3, guidance_scale=3.0, guidance_rescale=0.0,
         decode_timestep=0.0, decode_noise_scale=None, seed=1001, global_seed=2001),
    dict(name="0.9.1", variant="0.9.1", num_inference_steps=2, guidance_scale=3.0, guidance_rescale=0.7,
         decode_timestep=0.05, decode_noise_scale=0.025, seed=1002, global_seed=2002),
    dict(name="0.9.5", variant="0.9.5", num_inference_steps=2, guidance_scale=3.0, guidance_rescale=0.0,
         decode_timestep=0.05, decode_noise_scale=0.025, seed=1003, global_seed=2003),
]


def pipeline_call_kwargs(run: dict, image: Image.Image) -> dict:
    return dict(
        image=image,
        prompt=PIPELINE_PROMPT,
        negative_prompt=PIPELINE_NEGATIVE,
        height=64,
        width=64,
        num_frames=9,
        frame_rate=25,
        num_inference_steps=run["num_inference_steps"],
        guidance_scale=run["guidance_scale"],
        guidance_rescale=run["guidance_rescale"],
        decode_timestep=run["decode_timestep"],
        decode_noise_scale=run["decode_noise_scale"],
        generator=torch.Generator().manual_seed(run["seed"]),
        output_type="np",
        max_sequence_length=MAX_SEQ,
    )


def run_pipeline_plain(pipe, run: dict, image: Image.Image) -> np.ndarray:
    kwargs = pipeline_call_kwargs(run, image)
    torch.manual_seed(run["global_seed"])
    with torch.no_grad():
        return pipe(**kwargs).frames[0]


def ref_pipeline(run: dict, image_u8: np.ndarray) -> None:
    pipe = load_pipe(run["variant"])
    image = Image.fromarray(image_u8)
    cap: dict = {"noise_pred": [], "timestep_in": [], "step_latents": [], "global_draws": []}

    orig_retrieve = i2v_module.retrieve_latents

    def retrieve_wrap(encoder_output, generator=None, sample_mode="sample"):
        cap["image_latent_mean"] = encoder_output.latent_dist.mean.clone()
        cap["image_latent_std"] = encoder_output.latent_dist.std.clone()
        res = orig_retrieve(encoder_output, generator, sample_mode)
        cap["image_latent_sample"] = res.clone()
        return res

    orig_prepare = pipe.prepare_latents

    def prepare_wrap(*a, **k):
        lat, mask = orig_prepare(*a, **k)
        cap["initial_latents"] = lat.clone()
        cap["conditioning_mask"] = mask.clone()
        return lat, mask

    orig_tr_forward = pipe.transformer.forward

    def tr_forward(*a, **k):
        out = orig_tr_forward(*a, **k)
        cap["timestep_in"].append(k["timestep"].clone())
        cap["noise_pred"].append(out[0].clone())
        cap["rope_interpolation_scale"] = list(k["rope_interpolation_scale"])
        cap["transformer_grid"] = [k["num_frames"], k["height"], k["width"]]
        cap["prompt_embeds"] = k["encoder_hidden_states"].clone()
        cap["prompt_attention_mask"] = k["encoder_attention_mask"].clone()
        return out

    orig_decode = pipe.vae.decode
    expected_state = {}

    def decode_wrap(z, temb=None, return_dict=True):
        cap["decoder_input"] = z.clone()
        cap["decoder_temb"] = None if temb is None else temb.clone()
        cap["global_rng_untouched_before_decode"] = bool(torch.equal(torch.get_rng_state(), expected_state["s"]))
        with record_global_randn(cap["global_draws"]):
            return orig_decode(z, temb, return_dict=return_dict)

    def on_step_end(p, i, t, kw):
        cap["step_latents"].append(kw["latents"].clone())
        return {}

    i2v_module.retrieve_latents = retrieve_wrap
    pipe.prepare_latents = prepare_wrap
    pipe.transformer.forward = tr_forward
    pipe.vae.decode = decode_wrap
    try:
        kwargs = pipeline_call_kwargs(run, image)
        torch.manual_seed(run["global_seed"])
        expected_state["s"] = torch.get_rng_state()
        with torch.no_grad():
            frames = pipe(**kwargs, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"]).frames[0]
    finally:
        i2v_module.retrieve_latents = orig_retrieve

    frames = np.asarray(frames, dtype=np.float32)
    sched = pipe.scheduler
    tensors = {
        "image": torch.from_numpy(image_u8.copy()),
        "image_latent_mean": cap["image_latent_mean"],
        "image_latent_std": cap["image_latent_std"],
        "image_latent_sample": cap["image_latent_sample"],
        "initial_latents": cap["initial_latents"],
        "conditioning_mask": cap["conditioning_mask"],
        "prompt_embeds": cap["prompt_embeds"],
        "prompt_attention_mask": cap["prompt_attention_mask"].to(torch.int64),
        "final_latents": cap["step_latents"][-1],
        "decoder_input": cap["decoder_input"],
        "frames": torch.from_numpy(frames),
    }
    for i, (tin, npred, lat) in enumerate(zip(cap["timestep_in"], cap["noise_pred"], cap["step_latents"])):
        tensors[f"step{i}_timestep"] = tin
        tensors[f"step{i}_noise_pred"] = npred
        tensors[f"step{i}_latents"] = lat
    if cap["decoder_temb"] is not None:
        tensors["decoder_temb"] = cap["decoder_temb"]
    for i, t in enumerate(cap["global_draws"]):
        tensors[f"injected_noise_{i:02d}"] = t
    save_tensors(REFS / f"pipeline_{run['name']}.safetensors", tensors)

    call = {k: v for k, v in pipeline_call_kwargs(run, image).items() if k not in ("image", "generator")}
    call["generator"] = f"torch.Generator().manual_seed({run['seed']})  (CPU)"
    call["image"] = "PIL.Image.fromarray(image)  (64x64, so the Lanczos resize is the identity)"
    meta = {
        "model": f"models/ltx-{run['variant']}",
        "variant": run["variant"],
        "call": call,
        "generator_seed": run["seed"],
        "global_seed": run["global_seed"],
        "global_seed_note": "torch.manual_seed(global_seed) is called right before pipe(...); only the VAE decoder's noise injection (0.9.1) draws from the global RNG",
        "global_rng_untouched_before_decode": cap["global_rng_untouched_before_decode"],
        "injected_noise_draws": [list(t.shape) for t in cap["global_draws"]],
        "scheduler_sigmas": floats(sched.sigmas),
        "scheduler_sigmas_f32_bits": f32_bits_list(sched.sigmas),
        "scheduler_timesteps": floats(sched.timesteps),
        "scheduler_timesteps_f32_bits": f32_bits_list(sched.timesteps),
        "mu": float(
            calculate_shift(
                8,
                sched.config.get("base_image_seq_len", 256),
                sched.config.get("max_image_seq_len", 4096),
                sched.config.get("base_shift", 0.5),
                sched.config.get("max_shift", 1.15),
            )
        ),
        "latent_grid_f_h_w": cap["transformer_grid"],
        "rope_interpolation_scale": cap["rope_interpolation_scale"],
        "vae_timestep_conditioning": bool(pipe.vae.config.timestep_conditioning),
        "generator_draw_order": [
            "image_latent_sample = mean + std * randn([1,C,1,h,w], generator)",
            "noise = randn([1,C,F,h,w], generator)",
        ]
        + (["decode noise = randn([1,C,F,h,w], generator)"] if pipe.vae.config.timestep_conditioning else []),
        "tensors": shapes(tensors),
    }
    write_json(REFS / f"pipeline_{run['name']}.json", meta)
    assert cap["global_rng_untouched_before_decode"], "something drew from the global RNG before decode"
    log(f"pipeline {run['name']}: frames {tensor_stats(torch.from_numpy(frames))}; sigmas {floats(sched.sigmas)}")


def ref_resize() -> None:
    h, w = 37, 53
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            (x * 255) // (w - 1),
            (y * 255) // (h - 1),
            ((x * 7 + y * 13) % 64) * 4 + ((x // 5 + y // 3) % 2) * 3,
        ],
        axis=-1,
    ).astype(np.uint8)
    img[10:20, 30:45] = [255, 0, 128]
    img[(x - y) % 11 == 0] = [0, 0, 0]
    out = np.asarray(Image.fromarray(img).resize((64, 48), Image.LANCZOS))
    save_tensors(REFS / "resize.safetensors", {"image": torch.from_numpy(img.copy()), "resized": torch.from_numpy(out.copy())})
    write_json(
        REFS / "resize.json",
        {
            "call": "Image.fromarray(image, 'RGB').resize((64, 48), Image.LANCZOS)",
            "input_hw": [h, w],
            "output_hw": [48, 64],
            "pillow": PIL.__version__,
        },
    )
    log("resize: done")


def rng_tensors() -> dict:
    t = {}
    for n in [1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 256]:
        t[f"seed0_randn_{n}"] = torch.randn(n, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(42)
    for i, n in enumerate(RNG_SEQ):
        t[f"seed42_seq{i}_randn_{n}"] = torch.randn(n, generator=g)
    torch.manual_seed(7)
    t["global_seed7_randn_4x4"] = torch.randn(4, 4)
    t["global_seed7_then_randn_8x8"] = torch.randn(8, 8)
    t["seed0_rand_20"] = torch.rand(20, generator=torch.Generator().manual_seed(0))
    return t


RNG_SEQ = [32, 64, 5, 16, 3, 100]


def ref_rng() -> None:
    """torch CPU RNG reference draws. float32 randn with >= 16 elements fills uniforms first and
    then runs Box-Muller 16 at a time; the AVX2/AVX512 kernel (used here) computes log/sin/cos with
    vectorised polynomial approximations and differs in the last bits from the scalar (DEFAULT)
    kernel, so the DEFAULT-capability draws are stored as well (computed in a subprocess)."""
    t = rng_tensors()
    save_tensors(REFS / "rng.safetensors", t)
    default_path = REFS / "rng_cpu_default.safetensors"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--rng-only", str(default_path)], env=env, check=True)
    d = load_file(str(default_path))
    differing = sorted(k for k in t if not torch.equal(t[k], d[k]))
    write_json(
        REFS / "rng.json",
        {
            "note": (
                "seed0_randn_N = torch.randn(N, generator=torch.Generator().manual_seed(0)); seed42_seq* are "
                "consecutive draws from one Generator(42) in key order; global_* use torch.manual_seed(7) then "
                "torch.randn(4,4), torch.randn(8,8); seed0_rand_20 = torch.rand(20, generator=Generator(0))"
            ),
            "rng.safetensors_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "rng_cpu_default.safetensors_cpu_capability": "DEFAULT (ATEN_CPU_CAPABILITY=default)",
            "keys_that_differ_between_the_two": differing,
            "seed42_sequence_sizes": RNG_SEQ,
            "tensors": shapes(t),
        },
    )


# ----------------------------------------------------------------------------------------------
# 4. verification


def verify() -> None:
    image_u8 = make_input_image()
    image = Image.fromarray(image_u8)
    for variant in VARIANTS:
        pipe = load_pipe(variant)
        ref = load_file(str(REFS / f"vae_{variant}.safetensors"))
        with torch.no_grad():
            dist = pipe.vae.encode(ref["image"]).latent_dist
            assert torch.equal(dist.mean, ref["posterior_mean"]), variant
            if pipe.vae.config.timestep_conditioning:
                torch.manual_seed(SEED_VAE_DECODE_GLOBAL)
                dec = pipe.vae.decode(ref["decode_latents"], temb=ref["decode_temb"]).sample
                assert torch.equal(dec, ref["decoded_temb"]), variant
            else:
                dec = pipe.vae.decode(ref["decode_latents"], temb=None).sample
                assert torch.equal(dec, ref["decoded"]), variant
        for run in PIPELINE_RUNS:
            if run["variant"] != variant:
                continue
            frames = run_pipeline_plain(pipe, run, image)
            ref_p = load_file(str(REFS / f"pipeline_{run['name']}.safetensors"))
            same = np.array_equal(np.asarray(frames, dtype=np.float32), ref_p["frames"].numpy())
            assert same, f"pipeline {run['name']} not reproducible"
            log(f"verify: pipeline {run['name']} reproduced bit-exactly from a fresh from_pretrained")
    tok_ref = load_file(str(REFS / "tokenizer.safetensors"))
    for variant in VARIANTS:
        tok = load_pipe(variant).tokenizer
        enc = tok(TOKENIZER_PROMPTS, padding="max_length", max_length=MAX_SEQ, truncation=True,
                  add_special_tokens=True, return_tensors="pt")
        assert torch.equal(enc.input_ids, tok_ref["input_ids"]), variant
        assert torch.equal(enc.attention_mask, tok_ref["attention_mask"]), variant
    pipe = load_pipe("0.9.1")
    t5 = load_file(str(REFS / "t5.safetensors"))
    with torch.no_grad():
        assert torch.equal(pipe.text_encoder(t5["input_ids"])[0], t5["last_hidden_state"])
    tr = load_file(str(REFS / "transformer.safetensors"))
    with torch.no_grad():
        out = pipe.transformer(
            hidden_states=tr["hidden_states"],
            encoder_hidden_states=tr["encoder_hidden_states"],
            timestep=tr["timestep"],
            encoder_attention_mask=tr["encoder_attention_mask"],
            num_frames=2,
            height=3,
            width=4,
            rope_interpolation_scale=(8 / 25, 32, 32),
            return_dict=False,
        )[0]
    assert torch.equal(out, tr["sample"])
    log("verify: vae/t5/transformer references reproduced bit-exactly")


def file_digests() -> dict:
    res = {}
    for p in sorted(OUT.rglob("*")):
        if p.is_file() and p.name != "MANIFEST.json" and p.name != "README.md":
            res[str(p.relative_to(OUT))] = {
                "bytes": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
    return res


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--rng-only":
        save_tensors(Path(sys.argv[2]), rng_tensors())
        return 0
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "sentencepiece": spm.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    for k, v in EXPECTED_VERSIONS.items():
        if versions[k].split("+")[0] != v:
            log(f"WARNING: {k} {versions[k]} != pinned {v}; references may differ")

    readme = OUT / "README.md"
    keep_readme = readme.read_text(encoding="utf-8") if readme.exists() else None
    if OUT.exists():
        shutil.rmtree(OUT)
    REFS.mkdir(parents=True)
    if keep_readme is not None:
        readme.write_text(keep_readme, encoding="utf-8")

    notes: dict = {}
    tokenizer = build_tokenizer(notes)
    build_models(tokenizer, notes)

    pipe = load_pipe("0.9.1")
    ref_t5(pipe)
    ref_transformer(pipe)
    for variant in VARIANTS:
        ref_vae(variant, load_pipe(variant))
    ref_scheduler()
    image_u8 = make_input_image()
    for run in PIPELINE_RUNS:
        ref_pipeline(run, image_u8)
    ref_resize()
    ref_rng()

    verify()

    write_json(
        OUT / "MANIFEST.json",
        {
            "generator": "tools/ltx-fixtures/make_ltx_fixtures.py",
            "versions": versions,
            "torch_settings": {
                "num_threads": 1,
                "deterministic_algorithms": True,
                "device": "cpu",
                "dtype": "float32",
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            },
            "init_summary": {k: v for k, v in notes.items() if k != "tokenizer_mismatches"},
            "files": file_digests(),
        },
    )
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    log(f"total fixture bytes: {total} ({total / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
