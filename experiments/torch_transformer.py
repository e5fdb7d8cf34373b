"""The PyTorch twin of :func:`manualgrad.nn.TransformerLM`, with the weights copied from its params.

Used by the benchmark (PyTorch eager with ``F.scaled_dot_product_attention``) and by the tests
(float64: the same loss and every parameter gradient to 1e-10). One table, :func:`pairs`, maps
each manualgrad leaf to its torch tensor, so copying the weights in and reading the gradients
back out cannot disagree.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import numpy as np


def _blocks(params: Any, depth: int) -> list:
    """Each block's ``(ln1, attention, ln2, fc1, fc2)`` params from TransformerLM's serial layout."""
    out = []
    for attention, mlp in params[2 : 2 + depth]:
        (ln1, mha, *_), (ln2, fc1, _, fc2, *_) = attention, mlp  # trailing Dropouts have no params
        out.append((ln1, mha, ln2, fc1, fc2))
    return out


def torch_lm(params: Any, heads: int, positions: str = "learned"):
    """A ``torch.nn.Module`` computing TransformerLM's logits from ids ``(B, T)``, weights copied from
    ``params`` (float32 or float64, as they are). No dropout (the twin is for rate 0)."""
    import torch
    import torch.nn.functional as F

    from manualgrad.nn.sequence import sinusoids

    depth = len(params) - 4
    table = np.asarray(params[0]["table"])
    vocab, width = table.shape
    dtype = torch.float64 if table.dtype == np.float64 else torch.float32

    def linear(d_in: int, d_out: int) -> torch.nn.Linear:
        return torch.nn.Linear(d_in, d_out, dtype=dtype)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(width, dtype=dtype), torch.nn.LayerNorm(width, dtype=dtype)
            self.q, self.k, self.v, self.o = (linear(width, width) for _ in range(4))
            mlp = np.shape(_blocks(params, depth)[0][3]["w"])[1]
            self.fc1, self.fc2 = linear(width, mlp), linear(mlp, width)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.ln1(x)
            q, k, v = (p(h).view(b, t, heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(o.transpose(1, 2).reshape(b, t, width))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = torch.nn.Embedding(vocab, width, dtype=dtype)
            context = len(np.asarray(params[1]["table"])) if positions == "learned" else None
            if positions == "learned":
                self.pos = torch.nn.Parameter(torch.zeros(context, width, dtype=dtype))
            self.blocks = torch.nn.ModuleList(Block() for _ in range(depth))
            self.ln_f = torch.nn.LayerNorm(width, dtype=dtype)
            self.head = linear(width, vocab)

        def forward(self, ids):
            t = ids.shape[1]
            pos = self.pos[:t] if positions == "learned" else torch.tensor(sinusoids(t, width), dtype=dtype)
            x = self.tok(ids) + pos
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

    model = LM()
    with torch.no_grad():
        for _, tensor, value in pairs(params, model, positions):
            tensor.copy_(torch.tensor(np.asarray(value)))
    return model


def pairs(params: Any, model: Any, positions: str = "learned") -> Iterator[tuple[tuple, Any, Any]]:
    """``(path, torch_parameter, value)`` for every leaf of ``params``: ``path`` indexes the leaf in
    ``params``, ``value`` is the leaf as torch lays it out (a Linear's ``w.T``)."""
    def linear(path, p, module):
        yield path + ("w",), module.weight, np.asarray(p["w"]).T
        yield path + ("b",), module.bias, p["b"]

    def norm(path, p, module):
        yield path + ("gamma",), module.weight, p["gamma"]
        yield path + ("beta",), module.bias, p["beta"]

    yield (0, "table"), model.tok.weight, params[0]["table"]
    if positions == "learned":
        yield (1, "table"), model.pos, params[1]["table"]
    for i, ((ln1, mha, ln2, fc1, fc2), block) in enumerate(zip(_blocks(params, len(model.blocks)), model.blocks)):
        at, ml = (2 + i, 0), (2 + i, 1)
        yield from norm(at + (0,), ln1, block.ln1)
        for name in "qkvo":
            yield from linear(at + (1, name), mha[name], getattr(block, name))
        yield from norm(ml + (0,), ln2, block.ln2)
        yield from linear(ml + (1,), fc1, block.fc1)
        yield from linear(ml + (3,), fc2, block.fc2)
    depth = len(model.blocks)
    yield from norm((2 + depth,), params[2 + depth], model.ln_f)
    yield from linear((3 + depth,), params[3 + depth], model.head)


def torch_grads(params: Any, model: Any, positions: str = "learned") -> Any:
    """The twin's ``.grad`` of every parameter, in the layout of ``params`` (a Linear's ``w`` is ``weight.grad.T``)."""
    grads = {path: (t.grad.numpy().T if path[-1] == "w" else t.grad.numpy()) for path, t, _ in pairs(params, model, positions)}

    def at(path, leaf):
        return grads[tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)]

    return jax.tree_util.tree_map_with_path(at, params)
