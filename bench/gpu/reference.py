"""The nanoGPT-style PyTorch reference for the GPU check: GPT-2 as lmhost's presets build it,
trained the way nanoGPT trains it without torch.compile: bf16 autocast, fused causal attention
(`scaled_dot_product_attention`, flash on sm80+), fused AdamW, global-norm clipping at 1.0.

Model (the presets of `lmhost run --preset`): `gpt2` is GPT-2 124M exactly (tanh GELU, head tied
to the token embedding, no head bias); `small` and `tiny` are lmhost's baseline (exact GELU,
untied head with bias). Pre-LN blocks with biases, LayerNorm eps 1e-5. Token ids are random
(this measures speed only).

    python3 bench/gpu/reference.py --preset gpt2 --steps 10

prints `tokens/s: median M  mean A  min X  max Y` like `lmhost bench`, then
`mfu: P% (F GFLOP/token, peak T TFLOP/s)` with nanoGPT's estimate (6N + 12·L·C·T per token).
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # layers, width, heads, context, vocab, batch, micro-batch, gpt-2's head and GELU
    "tiny": (4, 256, 4, 128, 4096, 8, 8, False),
    "small": (6, 384, 6, 256, 8192, 8, 8, False),
    "gpt2": (12, 768, 12, 1024, 50257, 8, 4, True),
}


class Block(nn.Module):
    def __init__(self, c, h, gelu):
        super().__init__()
        self.h, self.gelu = h, gelu
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
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=self.gelu))


class Gpt(nn.Module):
    def __init__(self, layers, c, h, context, vocab, gpt2):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(context, c)
        self.h = nn.ModuleList(Block(c, h, "tanh" if gpt2 else "none") for _ in range(layers))
        self.ln_f = nn.LayerNorm(c, eps=1e-5)
        self.lm_head = nn.Linear(c, vocab, bias=not gpt2)
        if gpt2:
            self.lm_head.weight = self.wte.weight  # tied, as GPT-2 (and nanoGPT)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / (2 * layers) ** 0.5 if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe.weight[: ids.shape[1]]
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="gpt2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=["bf16-mixed", "tf32", "f32"], default="bf16-mixed")
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="the device's dense peak (H100/H200 bf16)")
    args = parser.parse_args()
    torch.manual_seed(1)
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    layers, c, h, context, vocab, batch, micro, gpt2 = PRESETS[args.preset]
    device = torch.device(args.device)
    model = Gpt(layers, c, h, context, vocab, gpt2).to(device)
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda",
    )
    params = sum(p.numel() for p in model.parameters())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    print(f"bench: pytorch {torch.__version__} preset:{args.preset} params:{params} precision:{args.precision} "
          f"batch:{batch}x{context} micro:{micro} device:{device} steps:{args.steps} (+{args.warmup} warmup)")
    rates = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, vocab, (batch, context + 1), device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for part in ids.split(micro):
            with autocast:
                logits = model(part[:, :-1])
                loss = F.cross_entropy(logits.float().view(-1, vocab), part[:, 1:].reshape(-1))
            (loss * part.shape[0] / batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            rates.append(batch * context / (time.perf_counter() - t0))
    rates.sort()
    median = rates[len(rates) // 2]
    print(f"tokens/s: median {median:.0f}  mean {sum(rates) / len(rates):.0f}  min {rates[0]:.0f}  max {rates[-1]:.0f}")
    flops_per_token = 6 * params + 12 * layers * c * context  # nanoGPT's estimate_mfu (PaLM, appendix B)
    print(f"mfu: {100 * median * flops_per_token / (args.peak_tflops * 1e12):.1f}% "
          f"({flops_per_token / 1e9:.3f} GFLOP/token, peak {args.peak_tflops:g} TFLOP/s)")


if __name__ == "__main__":
    main()
