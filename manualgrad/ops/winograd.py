r"""Winograd's minimal filtering F(2x2, 3x3) for a 3x3, stride-1 convolution, and its transpose.

In one dimension, two outputs of a 3-tap correlation, $y_i = \sum_p d_{i+p} w_p$ for $i \in \{0, 1\}$,
need 6 multiplies done directly and 4 as

$$
y = A^\top \big[ (G w) \odot (B^\top d) \big], \qquad
B^\top = \begin{pmatrix} 1 & 0 & -1 & 0 \\ 0 & 1 & 1 & 0 \\ 0 & -1 & 1 & 0 \\ 0 & 1 & 0 & -1 \end{pmatrix},\;
G = \begin{pmatrix} 1 & 0 & 0 \\ \tfrac12 & \tfrac12 & \tfrac12 \\ \tfrac12 & -\tfrac12 & \tfrac12 \\ 0 & 0 & 1 \end{pmatrix},\;
A^\top = \begin{pmatrix} 1 & 1 & 1 & 0 \\ 0 & 1 & -1 & -1 \end{pmatrix}
$$

for a tile $d$ of 4 inputs (exact in exact arithmetic: $A^\top \operatorname{diag}(G w) B^\top$ is
the correlation's 2x4 matrix). Nesting it over rows and columns, a 2x2 output tile of a padded
image $\tilde{x}$ whose 4x4 input tile is $D$ (rows and columns $2i \ldots 2i + 3$, $2j \ldots 2j + 3$)
is

$$
Y = A^\top M A, \qquad M_{ab,k} = \sum_c V_{ab,c}\, U_{ab,ck}, \qquad V = B^\top D B, \qquad
U_{\cdot\cdot,ck} = G\, w_{\cdot\cdot,ck}\, G^\top :
$$

the contraction over input channels is 16 independent GEMMs, one per transformed position
$(a, b)$, each over every tile of a batch slice at once,
$(n T, C_{in}) \times (C_{in}, C_{out})$: 2.25x fewer multiplies than the 9 of a direct 3x3
convolution. The tiles are 16 strided slices of $\tilde{x}$ (they step by 2 and overlap by 2),
stacked; each two-sided transform $m T m^\top$ is one product of the stack with the Kronecker
matrix $m \otimes m$ (entries 0 and $\pm 1$), as
$\operatorname{vec}(m T m^\top) = (m \otimes m) \operatorname{vec}(T)$. (As sums and differences
of the slices XLA:CPU split the transforms into dozens of small fusions: 1.5x slower on the MNIST
CNN's step.)

The VJP follows the same chain backwards. Each step is linear, so its transpose is the
transposed matrix: with $\bar{Y}$ the output tile's cotangent,

$$
\bar{M} = A \bar{Y} A^\top, \qquad
\bar{V}_{ab,c} = \sum_k \bar{M}_{ab,k}\, U_{ab,ck}, \qquad
\bar{U}_{ab,ck} = \sum_{\text{tiles}} V_{ab,c}\, \bar{M}_{ab,k},
$$

$$
\bar{D} = B \bar{V} B^\top, \qquad \bar{w}_{\cdot\cdot,ck} = G^\top \bar{U}_{\cdot\cdot,ck}\, G ,
$$

and $\bar{\tilde{x}}$ sums each tile's $\bar{D}$ at the place its $D$ was read: a row (column) of
$\tilde{x}$ belongs to two tiles, rows $0, 1$ of tile $i$ and rows $2, 3$ of tile $i - 1$
(overlap-add). $\bar{M}$ is computed once and serves both $\bar{V}$ and $\bar{U}$; $V$ is
recomputed from $\tilde{x}$ rather than kept.

Large batches run in slices of about ``CHUNK_TILES`` tiles (one example if it alone has more),
so that each slice's transformed tiles stay in cache; the weight's cotangent is summed over the
slices in float32 at least (in bfloat16 its error doubled over 8 slices).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])

#: tiles (2x2 outputs) per batch slice: 32 MNIST-sized 14x14 images. Measured in the MNIST CNN's
#: train step on the 2-core CPU (interleaved rounds): slices of 1568 tiles were the fastest or level
#: with the fastest at batch 128 and 512; 784 within 10%; 3136 twice as slow at batch 128 in each of
#: three runs
CHUNK_TILES = 1568

Pads = tuple[tuple[int, int], tuple[int, int]]


def _transform(m: np.ndarray, t: jax.Array) -> jax.Array:
    """``m T m^T`` for every tile: ``t`` holds the tiles' ``q x q`` entries on its leading axis
    (``q^2``, row-major), the result the ``p x p`` entries of ``m`` (p, q) on either side, as one
    product with the Kronecker matrix ``kron(m, m)`` (``p^2``, ``q^2``)."""
    k = jnp.asarray(np.kron(m, m), t.dtype)
    return lax.dot_general(k, t, (((1,), (0,)), ((), ())))


def _tiles(xp: jax.Array, th: int, tw: int) -> jax.Array:
    """The 4x4 input tiles of ``xp`` (N, 2 th + 2, 2 tw + 2, C), stepping by 2: ``(16, N, th, tw, C)``."""
    return jnp.stack([xp[:, i : i + 2 * th : 2, j : j + 2 * tw : 2, :] for i in range(4) for j in range(4)])


def _input_transform(xp: jax.Array, th: int, tw: int) -> jax.Array:
    """``V = B^T D B`` for every 4x4 tile ``D`` of ``xp``: ``(16, N th tw, C)``."""
    v = _transform(B_T, _tiles(xp, th, tw))
    return v.reshape(16, -1, v.shape[-1])


def _kernel_transform(w: jax.Array) -> jax.Array:
    """``U = G w G^T`` per (input, output) channel pair: ``(16, C_in, C_out)``."""
    gm = jnp.asarray(G, w.dtype)
    return jnp.einsum("ai,ijck,bj->abck", gm, w, gm).reshape(16, *w.shape[2:])


def _tile_forward(xp: jax.Array, u: jax.Array) -> jax.Array:
    """The VALID correlation of ``xp`` (n, 2 th + 2, 2 tw + 2, C_in) with the kernel whose
    transform is ``u``: ``(n, 2 th, 2 tw, C_out)``."""
    n, th, tw = xp.shape[0], (xp.shape[1] - 2) // 2, (xp.shape[2] - 2) // 2
    m = lax.dot_general(_input_transform(xp, th, tw), u, (((2,), (1,)), ((0,), (0,))))
    y = _transform(A_T, m).reshape(2, 2, n, th, tw, -1)  # output tile entry (r, s) of every tile
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, -1)


def _tile_backward(xp: jax.Array, u: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(xp_bar, u_bar)`` for ``_tile_forward(xp, u)`` and its cotangent ``g`` (n, 2 th, 2 tw, C_out)."""
    n, th, tw, c = g.shape[0], g.shape[1] // 2, g.shape[2] // 2, xp.shape[3]
    g_tiles = g.reshape(n, th, 2, tw, 2, -1).transpose(2, 4, 0, 1, 3, 5).reshape(4, n * th * tw, -1)
    m_bar = _transform(A_T.T, g_tiles)
    v_bar = lax.dot_general(m_bar, u, (((2,), (2,)), ((0,), (0,))))
    u_bar = lax.dot_general(_input_transform(xp, th, tw), m_bar, (((1,), (1,)), ((0,), (0,))))
    # d_bar[down, r, right, s]: entry (2 down + r, 2 right + s) of every tile's D_bar; padded row
    # 2 I + r collects row r of tile I (down = 0) and row r + 2 of tile I - 1 (down = 1), columns alike
    d_bar = _transform(B_T.T, v_bar).reshape(2, 2, 2, 2, n, th, tw, c)
    xp_bar = sum(
        jnp.pad(d_bar[down, :, right], ((0, 0), (0, 0), (0, 0), (down, 1 - down), (right, 1 - right), (0, 0)))
        for down in range(2) for right in range(2)
    )  # (r, s, n, th + 1, tw + 1, C)
    return xp_bar.transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * th + 2, 2 * tw + 2, c), u_bar


class _Layout(NamedTuple):
    """How a batch is cut into slices: output size ``(Ho, Wo)``, examples per slice and slices."""

    out: tuple[int, int]
    step: int
    slices: int


def _layout(x_shape: tuple, pads: Pads) -> _Layout:
    out = tuple(n + lo + hi - 2 for n, (lo, hi) in zip(x_shape[1:3], pads))
    tiles = -(-out[0] // 2) * -(-out[1] // 2)  # per example: the output rounded up to whole 2x2 tiles
    n = x_shape[0]
    slices = max(1, -(-n * tiles // CHUNK_TILES))  # as few as hold CHUNK_TILES each,
    step = max(1, -(-n // slices))  # as even as can be: at most slices - 1 added zero examples
    return _Layout(out, step, -(-n // step) if n else 1)


def _batches(a: jax.Array, lay: _Layout) -> jax.Array:
    """``a`` (N, ...) as ``(slices, step, ...)``, with zero examples added to whole slices: no copy
    when ``step`` divides N."""
    a = jnp.pad(a, ((0, lay.slices * lay.step - a.shape[0]),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape(lay.slices, lay.step, *a.shape[1:])


def _unbatched(a: jax.Array, n: int) -> jax.Array:
    return a.reshape(-1, *a.shape[2:])[:n]


def _rounded_up(a: jax.Array, lay: _Layout, pads: Pads = ((0, 0), (0, 0))) -> jax.Array:
    """A slice ``a`` padded by ``pads``, plus a zero row (column) below (right) when the output
    has an odd number of rows (columns): whole 2x2 output tiles. Done per slice, inside the loop,
    so the batch is not copied."""
    (t, b), (l, r) = pads
    return jnp.pad(a, ((0, 0), (t, b + lay.out[0] % 2), (l, r + lay.out[1] % 2), (0, 0)))


def conv(x: jax.Array, w: jax.Array, pads: Pads) -> jax.Array:
    """The correlation of ``x`` (N, H, W, C_in) zero-padded by ``pads`` ((top, bottom), (left,
    right)) with the 3x3 kernel ``w`` (3, 3, C_in, C_out), stride 1: ``(N, Ho, Wo, C_out)``."""
    lay = _layout(x.shape, pads)
    u = _kernel_transform(w)

    def one(xs: jax.Array) -> jax.Array:
        return _tile_forward(_rounded_up(xs, lay, pads), u)[:, : lay.out[0], : lay.out[1], :]

    return _unbatched(lax.map(one, _batches(x, lay)), x.shape[0])


def conv_vjp(x: jax.Array, w: jax.Array, g: jax.Array, pads: Pads) -> tuple[jax.Array, jax.Array]:
    """``(x_bar, w_bar)`` for ``conv(x, w, pads)`` and its cotangent ``g``: the backward of each of
    the forward's batch slices in turn (``lax.scan``), ``u_bar`` summed over them; ``g`` gets zero
    rows (columns) where the forward rounded the output up to whole tiles."""
    lay = _layout(x.shape, pads)
    (t, _), (l, _) = pads
    u = _kernel_transform(w)
    acc = jnp.promote_types(u.dtype, jnp.float32)  # the slices' sum, in float32 at least

    def one(u_bar: jax.Array, slice_: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        xs, gs = slice_
        xp_bar, u_bar_slice = _tile_backward(_rounded_up(xs, lay, pads), u, _rounded_up(gs, lay))
        return u_bar + u_bar_slice.astype(acc), xp_bar[:, t : t + x.shape[1], l : l + x.shape[2], :]

    u_bar, x_bar = lax.scan(one, jnp.zeros(u.shape, acc), (_batches(x, lay), _batches(g, lay)))
    return _unbatched(x_bar, x.shape[0]), _kernel_cotangent(u_bar).astype(w.dtype)


def _kernel_cotangent(u_bar: jax.Array) -> jax.Array:
    """``w_bar = G^T u_bar G`` from ``u_bar`` (16, C_in, C_out): ``(3, 3, C_in, C_out)``."""
    gm = jnp.asarray(G, u_bar.dtype)
    return jnp.einsum("ai,abck,bj->ijck", gm, u_bar.reshape(4, 4, *u_bar.shape[1:]), gm)
