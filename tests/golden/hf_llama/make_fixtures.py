"""Golden fixtures for lmhost's Hugging Face Llama interop, and the check that `transformers`
loads what `lmhost export --format hf-llama` writes.

Make the fixtures (committed; CI reads them without PyTorch):

    pip install torch transformers safetensors
    python tests/golden/hf_llama/make_fixtures.py

writes, for two tiny random Llama models (an untied head with RoPE base 10^4 and RMSNorm eps
1e-5; a tied head with base 5·10^5 and eps 1e-6), a folder `<name>/` as `save_pretrained` makes
it, `ids.safetensors` (fixed token ids) and `<name>.logits.safetensors` (what transformers
computes for them).

Check an lmhost export:

    lmhost export runs/<id> --format hf-llama --out /tmp/hf
    lmhost logits runs/<id> --ids tests/golden/hf_llama/ids.safetensors --out /tmp/lmhost.safetensors
    python tests/golden/hf_llama/make_fixtures.py --check /tmp/hf /tmp/lmhost.safetensors
"""

import argparse
import pathlib

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

HERE = pathlib.Path(__file__).parent
VOCAB, POSITIONS, ROWS, COLS = 97, 16, 2, 16

MODELS = {
    "tiny_llama": dict(tie_word_embeddings=False, rope_theta=10_000.0, rms_norm_eps=1e-5),
    "tiny_llama_tied": dict(tie_word_embeddings=True, rope_theta=500_000.0, rms_norm_eps=1e-6),
}


def make() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (ROWS, COLS), generator=g)
    save_file({"ids": ids.to(torch.int64)}, HERE / "ids.safetensors")
    for name, extra in MODELS.items():
        torch.manual_seed(1)
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=POSITIONS,
            bos_token_id=0, eos_token_id=0, **extra,
        )
        model = LlamaForCausalLM(config).eval()
        # Every parameter random and large enough to matter: unit gains would hide a misplaced
        # or transposed gain.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                p.normal_(1.0 if pname.endswith("norm.weight") else 0.0, 0.2)
        model.save_pretrained(HERE / name, safe_serialization=True)
        with torch.no_grad():
            logits = model(ids).logits
        save_file({"logits": logits.contiguous()}, HERE / f"{name}.logits.safetensors")
        print(f"{name}: logits {tuple(logits.shape)}, |logit| mean {logits.abs().mean():.3f}")


def check(folder: pathlib.Path, lmhost_logits: pathlib.Path) -> None:
    model = LlamaForCausalLM.from_pretrained(folder).eval()
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
          f"max |logit difference| vs lmhost {worst:.2e}; tokenizer round trip: {round_trip!r}")
    assert worst < 1e-4, worst
    assert round_trip == text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", nargs=2, type=pathlib.Path, metavar=("HF_FOLDER", "LMHOST_LOGITS"))
    args = parser.parse_args()
    check(*args.check) if args.check else make()
