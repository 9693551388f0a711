"""Golden fixtures for lmhost's Hugging Face GPT-2 interop (llm.c style), and the check that
`transformers` loads what `lmhost export --format hf-gpt2` writes.

Make the fixtures (committed; CI reads them without PyTorch):

    pip install torch transformers safetensors
    python tests/golden/hf_gpt2/make_fixtures.py

writes, for two tiny random GPT-2 models (exact GPT-2: tanh GELU and a tied head; and the
untied, exact-GELU variant), a folder `<name>/` as `save_pretrained` makes it, `ids.safetensors`
(fixed token ids) and `<name>.logits.safetensors` (what transformers computes for them).

Check an lmhost export:

    lmhost export runs/<id> --format hf-gpt2 --out /tmp/hf
    lmhost logits runs/<id> --ids tests/golden/hf_gpt2/ids.safetensors --out /tmp/lmhost.safetensors
    python tests/golden/hf_gpt2/make_fixtures.py --check /tmp/hf /tmp/lmhost.safetensors

loads the folder with `GPT2LMHeadModel.from_pretrained` and its tokenizer with
`AutoTokenizer.from_pretrained`, and compares transformers' logits with lmhost's.
"""

import argparse
import pathlib

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

HERE = pathlib.Path(__file__).parent
VOCAB, POSITIONS, ROWS, COLS = 97, 16, 2, 16

MODELS = {
    "tiny_gpt2": dict(activation_function="gelu_new", tie_word_embeddings=True),
    "tiny_untied_erf": dict(activation_function="gelu", tie_word_embeddings=False),
}


def make() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (ROWS, COLS), generator=g)
    save_file({"ids": ids.to(torch.int64)}, HERE / "ids.safetensors")
    for name, extra in MODELS.items():
        torch.manual_seed(1)
        config = GPT2Config(
            vocab_size=VOCAB, n_positions=POSITIONS, n_embd=32, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, **extra,
        )
        model = GPT2LMHeadModel(config).eval()
        # Every parameter random and large enough to matter: zero biases and unit gains would
        # hide a misplaced bias or a transposed gain.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                p.normal_(1.0 if pname.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0, 0.2)
        model.save_pretrained(HERE / name, safe_serialization=True)
        with torch.no_grad():
            logits = model(ids).logits
        save_file({"logits": logits.contiguous()}, HERE / f"{name}.logits.safetensors")
        print(f"{name}: logits {tuple(logits.shape)}, |logit| mean {logits.abs().mean():.3f}")


def check(folder: pathlib.Path, lmhost_logits: pathlib.Path) -> None:
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = load_file(HERE / "ids.safetensors")["ids"]
    ids = ids % model.config.vocab_size
    ours = load_file(lmhost_logits)["logits"]
    with torch.no_grad():
        theirs = model(ids[:, : ours.shape[1]]).logits
    worst = (theirs - ours).abs().max().item()
    text = "To be, or not to be"
    round_trip = tokenizer.decode(tokenizer(text)["input_ids"])
    print(f"transformers loaded {folder}: {sum(p.numel() for p in model.parameters())} parameters, "
          f"tied head: {model.lm_head.weight is model.transformer.wte.weight}, "
          f"max |logit difference| vs lmhost {worst:.2e}; tokenizer round trip: {round_trip!r}")
    assert worst < 1e-4, worst
    assert round_trip == text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", nargs=2, type=pathlib.Path, metavar=("HF_FOLDER", "LMHOST_LOGITS"))
    args = parser.parse_args()
    check(*args.check) if args.check else make()
