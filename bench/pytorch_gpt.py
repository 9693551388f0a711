"""The PyTorch reference for `lmhost bench`: the same baseline GPT, the same optimiser and the
same step, trained in PyTorch 2 eager mode on the same number of threads.

Model (lmhost's baseline, `plugin-api/kit/src/gpt.rs`): token embedding + learned position
embedding (zero-initialised) -> L pre-LN blocks (fused q/k/v with bias, causal attention through
`scaled_dot_product_attention` as nanoGPT does, output projection with bias; MLP C -> 4C -> C
with exact GELU) -> final LayerNorm -> untied head with bias. LayerNorm eps 1e-5. AdamW
(betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only), global-norm clipping at 1.0.

    python bench/pytorch_gpt.py --preset tiny --steps 20

prints the same summary line as `lmhost bench`:
`tokens/s: median M  mean A  min X  max Y  peak_rss_mb: R`.
"""

import argparse
import os
import resource
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # a CPU benchmark: never initialise CUDA

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # layers, width, heads, context, vocab, batch
    "tiny": (4, 256, 4, 128, 4096, 8),
    "small": (6, 384, 6, 256, 8192, 8),
}


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(c, eps=1e-5)
        self.c_attn = nn.Linear(c, 3 * c)
        self.attn_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c, eps=1e-5)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Gpt(nn.Module):
    def __init__(self, layers, c, h, context, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Parameter(torch.zeros(context, c))
        self.h = nn.ModuleList(Block(c, h) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c, eps=1e-5)
        self.lm_head = nn.Linear(c, vocab)
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != "wpe":
                std = 0.02 / (2 * layers) ** 0.5 if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe[: ids.shape[1]]
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    layers, c, h, context, vocab, batch = PRESETS[args.preset]
    model = Gpt(layers, c, h, context, vocab)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"bench: pytorch {torch.__version__} preset:{args.preset} params:{params} batch:{batch}x{context} "
          f"threads:{torch.get_num_threads()} steps:{args.steps} (+{args.warmup} warmup)")
    g = torch.Generator().manual_seed(0)
    rates = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, vocab, (batch, context + 1), generator=g)
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.view(-1, vocab), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        rate = batch * context / (time.perf_counter() - t0)
        if step >= args.warmup:
            rates.append(rate)
    rates.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"tokens/s: median {rates[len(rates) // 2]:.0f}  mean {sum(rates) / len(rates):.0f}  "
          f"min {rates[0]:.0f}  max {rates[-1]:.0f}  peak_rss_mb: {peak:.0f}")


if __name__ == "__main__":
    main()
