#!/usr/bin/env python3
"""References for LTXConditionPipeline's text path (diffusers 0.42.1 `encode_prompt`): the
T5 tokenizer padded/truncated to max_sequence_length 256, the attention mask passed to T5,
for a plain prompt, the replaced service's negative prompt, an empty prompt and one longer
than 256 tokens. `../shared/specs/ltx-condition.md` §2.3.

Usage (from the repository root, in the venv of tools/ltx-fixtures/requirements.txt, after
make_ltx_fixtures.py, which wipes tests/fixtures/ltx/):

    python tools/ltx-fixtures/make_condition_text.py

Writes tests/fixtures/ltx/refs/condition_text.{safetensors,json}. CPU, float32, one thread.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoTokenizer, T5EncoderModel  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXConditionPipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ltx"
MODEL = FIXTURES / "models" / "ltx-0.9.5"
REFS = FIXTURES / "refs"

CASES = {
    "plain": ("a red ball bounces on a wooden table", "worst quality, inconsistent motion, blurry, jittery, distorted"),
    "empty": ("", ""),
    # Over 256 tokens: truncated, the end token kept.
    "long": (" ".join(f"word{i} and more" for i in range(120)), "low quality"),
}


def main() -> None:
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(MODEL / "tokenizer")
    t5 = T5EncoderModel.from_pretrained(MODEL / "text_encoder").eval()
    pipe = LTXConditionPipeline(scheduler=None, vae=None, text_encoder=t5, tokenizer=tok, transformer=None)
    out = {}
    meta = {
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "max_sequence_length": 256,
        "cases": {},
    }
    with torch.no_grad():
        for name, (prompt, negative) in CASES.items():
            pe, pm, ne, nm = pipe.encode_prompt(
                prompt, negative, do_classifier_free_guidance=True, max_sequence_length=256, device="cpu"
            )
            out[f"{name}.prompt_embeds"] = pe.contiguous()
            out[f"{name}.prompt_mask"] = pm.to(torch.float32)
            out[f"{name}.negative_embeds"] = ne.contiguous()
            out[f"{name}.negative_mask"] = nm.to(torch.float32)
            meta["cases"][name] = {"prompt": prompt, "negative_prompt": negative}
    REFS.mkdir(parents=True, exist_ok=True)
    save_file(out, REFS / "condition_text.safetensors")
    (REFS / "condition_text.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", REFS / "condition_text.safetensors")


if __name__ == "__main__":
    main()
