"""Writes tests/fixtures/ltx/torchscript/text_encoder.pt: the fixtures' tiny T5 encoder
traced to TorchScript the way a user would export one for ltx-i2v
(`torch.jit.trace` of a wrapper whose forward(input_ids) returns last_hidden_state). Checks that the traced module reproduces refs/t5.safetensors.
Run after make_ltx_fixtures.py.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import T5EncoderModel

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "tests/fixtures/ltx/models/ltx-0.9.1/text_encoder"
OUT = REPO / "tests/fixtures/ltx/torchscript/text_encoder.pt"


def main():
    refs = load_file(REPO / "tests/fixtures/ltx/refs/t5.safetensors")
    model = T5EncoderModel.from_pretrained(str(MODEL)).eval()

    class Encoder(torch.nn.Module):
        """forward(input_ids) -> last_hidden_state, without transformers' output classes."""

        def __init__(self, t5):
            super().__init__()
            self.t5 = t5

        def forward(self, input_ids):
            return self.t5(input_ids=input_ids, return_dict=False)[0]

    with torch.no_grad():
        traced = torch.jit.trace(Encoder(model), (refs["input_ids"],))
        out = traced(refs["input_ids"])
    err = (out - refs["last_hidden_state"]).abs().max().item()
    assert err <= 1e-5, err
    OUT.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(OUT))
    print(f"{OUT.relative_to(REPO)}: traced T5 encoder, max abs error vs refs {err:.2e}")


if __name__ == "__main__":
    main()
