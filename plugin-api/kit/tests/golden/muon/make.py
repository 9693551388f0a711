"""Golden values for lmhost's Muon from torch.optim.Muon (PyTorch >= 2.9), made once:

    python3 plugin-api/kit/tests/golden/muon/make.py

Three steps on a block's matrices (a fused q/k/v projection orthogonalised as three blocks, a tall
and a wide MLP matrix) under Muon and an embedding and a gain under AdamW, as lmhost splits them.
`bf16.*` is torch's Muon as shipped (Newton-Schulz in bf16); `f32.*` the same with Newton-Schulz
in f32, for a tight comparison.
"""
import pathlib

import torch
import torch.optim._muon as muon_module
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).parent
LR, MUON_LR_SCALE, MUON_WD, WD = 1e-3, 20.0, 0.005, 0.1
SHAPES = {
    "transformer.h.0.attn.c_attn.weight": (12, 4),
    "transformer.h.0.mlp.c_fc.weight": (16, 4),
    "transformer.h.0.mlp.c_proj.weight": (4, 16),
    "transformer.wte.weight": (10, 4),
    "transformer.h.0.ln_1.weight": (4,),
}
STEPS = 3

torch.manual_seed(0)
init = {n: torch.randn(s) * 0.5 for n, s in SHAPES.items()}
grads = [{n: torch.randn(s) for n, s in SHAPES.items()} for _ in range(STEPS)]
shipped_ns = muon_module._zeropower_via_newtonschulz


def f32_ns(grad, ns_coefficients, ns_steps, eps):
    # torch's function with its bf16 copy made in f32 instead.
    a, b, c = ns_coefficients
    x = grad.to(dtype=torch.float32, copy=True)
    if grad.size(0) > grad.size(1):
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    if grad.size(0) > grad.size(1):
        x = x.T
    return x


def train(ns):
    muon_module._zeropower_via_newtonschulz = ns
    qkv = "transformer.h.0.attn.c_attn.weight"
    blocks = [p.clone().requires_grad_() for p in init[qkv].chunk(3, 0)]
    whole = {n: init[n].clone().requires_grad_() for n in SHAPES if n != qkv}
    muon_params = blocks + [whole["transformer.h.0.mlp.c_fc.weight"], whole["transformer.h.0.mlp.c_proj.weight"]]
    muon = torch.optim.Muon(muon_params, lr=LR * MUON_LR_SCALE, weight_decay=MUON_WD, momentum=0.95, nesterov=True)
    adamw = torch.optim.AdamW(
        [
            {"params": [whole["transformer.wte.weight"]], "weight_decay": WD},
            {"params": [whole["transformer.h.0.ln_1.weight"]], "weight_decay": 0.0},
        ],
        lr=LR,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    for step in grads:
        for b, g in zip(blocks, step[qkv].chunk(3, 0)):
            b.grad = g.clone()
        for n, p in whole.items():
            p.grad = step[n].clone()
        muon.step()
        adamw.step()
    out = {n: p.detach().clone() for n, p in whole.items()}
    out[qkv] = torch.cat([b.detach() for b in blocks], 0)
    momentum = {qkv: torch.cat([muon.state[b]["momentum_buffer"] for b in blocks], 0)}
    for n in ["transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"]:
        momentum[n] = muon.state[whole[n]]["momentum_buffer"].clone()
    return out, momentum


tensors = {f"init.{n}": t for n, t in init.items()}
for t, step in enumerate(grads):
    tensors.update({f"grad.{t}.{n}": g for n, g in step.items()})
for label, ns in [("f32", f32_ns), ("bf16", shipped_ns)]:
    params, momentum = train(ns)
    tensors.update({f"{label}.{n}": p for n, p in params.items()})
    tensors.update({f"{label}.momentum.{n}": m for n, m in momentum.items()})
save_file({k: v.contiguous() for k, v in tensors.items()}, HERE / "muon.safetensors", metadata={"torch": torch.__version__})
print(f"wrote {len(tensors)} tensors with torch {torch.__version__}")
