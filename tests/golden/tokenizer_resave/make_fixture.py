"""Makes resaved/tokenizer.json: lmhost's tokenizer.json beside this script (a 512-token BPE
that `lmhost run baseline vocab_size=512` trained on the embedded corpus) loaded and saved again
by Hugging Face `transformers`, as a fine-tuning script would. transformers pretty-prints it and
adds an identity post-processor; the ids it gives any text are the same.

    pip install transformers
    python tests/golden/tokenizer_resave/make_fixture.py
"""

import pathlib

from transformers import PreTrainedTokenizerFast

here = pathlib.Path(__file__).parent
tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(here / "tokenizer.json"), eos_token="<|endoftext|>")
tokenizer.save_pretrained(str(here / "resaved"))
text = "ROMEO: But soft, what light through yonder window breaks?"
original = PreTrainedTokenizerFast(tokenizer_file=str(here / "tokenizer.json"))
assert original(text)["input_ids"] == PreTrainedTokenizerFast(tokenizer_file=str(here / "resaved/tokenizer.json"))(text)["input_ids"]
print("wrote", here / "resaved")
