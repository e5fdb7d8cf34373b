"""2-D convolution (cross-correlation) of NHWC images with HWIO kernels, and its hand-written VJP."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, positive_int, same_dtype
from manualgrad.ops import windows, winograd

_WHERE = "manualgrad.ops.conv2d"
_NHWC = ("NHWC", "HWIO", "NHWC")

Padding = Any  # "VALID", "SAME", an int, or ((top, bottom), (left, right))


def _int_pair(where: str, name: str, value: Any) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, all positive) as a pair; anything else fails naming ``name``."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    if (
        not isinstance(pair, tuple)
        or len(pair) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in pair)
    ):
        fail(where, f"{name}={value!r} must be a positive int or a tuple of two positive ints (rows, columns)")
    return int(pair[0]), int(pair[1])


class _Geometry(NamedTuple):
    """A convolution's static layout: strides, dilations, explicit pads, dilated kernel extents, and
    per spatial axis ``unread``, the trailing rows/columns of the padded input that no window reaches,
    ``(H + top + bottom - dilated_KH) % stride_h``, and ``out``, the output size, the same span ``//
    stride_h + 1``."""

    strides: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    extent: tuple[int, int]
    unread: tuple[int, int]
    out: tuple[int, int]


def _explicit_pads(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``padding`` as ((top, bottom), (left, right)) non-negative ints, or None if it is none of the accepted forms."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        return ((int(padding), int(padding)),) * 2 if padding >= 0 else None
    if (
        isinstance(padding, tuple)
        and len(padding) == 2
        and all(isinstance(p, tuple) and len(p) == 2 for p in padding)
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for p in padding for v in p)
    ):
        return tuple((int(lo), int(hi)) for lo, hi in padding)
    return None


def _geometry(x_shape: tuple, w_shape: tuple, stride: Any, padding: Padding, dilation: Any) -> _Geometry:
    strides = _int_pair(_WHERE, "stride", stride)
    dil = _int_pair(_WHERE, "dilation", dilation)
    extent = tuple((k - 1) * d + 1 for k, d in zip(w_shape[:2], dil))
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pads = tuple(lax.padtype_to_pads(x_shape[1:3], extent, strides, "SAME"))
    else:
        pads = _explicit_pads(padding)
        if pads is None:
            fail(
                _WHERE,
                f"padding={padding!r} must be 'VALID', 'SAME', a non-negative int p (p on every side) "
                "or ((top, bottom), (left, right)) of non-negative ints",
            )
    spans = [(n + lo + hi - e, s) for n, (lo, hi), e, s in zip(x_shape[1:3], pads, extent, strides)]
    unread, out = tuple(span % s for span, s in spans), tuple(span // s + 1 for span, s in spans)
    return _Geometry(strides, dil, pads, extent, unread, out)


def _check_conv2d(
    x: jax.Array, w: jax.Array, b: jax.Array, stride: Any = 1, padding: Padding = "VALID", dilation: Any = 1,
    groups: int = 1, impl: str = "auto",
) -> None:
    if impl not in IMPLS:
        fail(_WHERE, f"impl={impl!r} must be one of {IMPLS}")
    if jnp.ndim(w) != 4:
        fail(_WHERE, f"{describe('w', w)}: w must be HWIO, shape (KH, KW, C_in // groups, C_out)")
    positive_int(_WHERE, "groups", groups)
    kh, kw, c_group, c_out = np.shape(w)
    c_in = c_group * groups
    if jnp.ndim(x) != 4:
        fail(_WHERE, f"{describe('x', x)}: x must be NHWC, shape (N, H, W, C_in) with C_in={c_in}")
    if np.shape(x)[-1] % groups:
        fail(_WHERE, f"groups={groups} does not divide x's {np.shape(x)[-1]} input channels ({describe('x', x)})")
    if np.shape(x)[-1] != c_in:
        hint = ""
        if np.shape(x)[1] == c_in:
            hint = f"; NHWC expected: an NCHW input would have its {c_in} channels on axis 1, as this one seems to"
        fail(
            _WHERE,
            f"x.shape={np.shape(x)} has {np.shape(x)[-1]} input channels on its last axis but "
            f"w.shape={np.shape(w)} with groups={groups} expects C_in = {c_group} * {groups} = {c_in}{hint}",
        )
    if c_out % groups:
        fail(_WHERE, f"groups={groups} does not divide w's {c_out} output channels ({describe('w', w)})")
    if np.shape(b) != (c_out,):
        fail(_WHERE, f"b.shape={np.shape(b)} does not match w.shape={np.shape(w)}: b needs shape (C_out,)=({c_out},)")
    geo = _geometry(np.shape(x), np.shape(w), stride, padding, dilation)
    for axis, n, (lo, hi), k, d, e in zip(("H", "W"), np.shape(x)[1:3], geo.pads, (kh, kw), geo.dilation, geo.extent):
        if e > n + lo + hi:
            fail(
                _WHERE,
                f"the kernel spans {e} along {axis} (size {k}, dilation {d}) but the padded input has only "
                f"{n + lo + hi} ({axis}={n} + padding {lo} + {hi}); x.shape={np.shape(x)}, w.shape={np.shape(w)}",
            )
    if impl == "winograd" and not _winograd_fits(np.shape(w), geo, groups):
        fail(
            _WHERE,
            f"impl='winograd' needs a 3x3 kernel, stride 1, dilation 1 and groups=1; got w.shape={np.shape(w)}, "
            f"stride={geo.strides}, dilation={geo.dilation}, groups={groups}",
        )
    same_dtype(_WHERE, x=x, w=w, b=b)


def _conv2d_examples(rng: np.random.Generator) -> list[Example]:
    def case(x_shape: tuple, k: tuple, c_out: int, groups: int = 1, **params: Any) -> Example:
        w_shape = (*k, x_shape[-1] // groups, c_out)
        args = (rng.normal(size=x_shape), rng.normal(size=w_shape), rng.normal(size=c_out))
        return Example(args, dict(params, groups=groups) if groups > 1 else params)

    # each example combines several edge cases: together they cover every branch of the backward;
    # the default impl ("auto": on CPU gemm for these few channels, xla on GPU) and then the other formulation
    examples = [
        # stride > kernel, asymmetric padding; the last 2 padded rows and columns are never read
        case((2, 6, 5, 3), (2, 2), 4, stride=3, padding=((1, 0), (0, 2))),
        # padding larger than the kernel (x_bar's pads go negative), dilation 2, a batch of one
        case((1, 4, 4, 2), (2, 2), 3, padding=3, dilation=2),
        case((2, 3, 4, 3), (1, 1), 2, stride=2, padding=1),  # 1x1 kernel inside its padding, an unread column
        case((2, 5, 6, 4), (3, 3), 2, groups=2, stride=2, padding="SAME"),  # SAME with stride 2, groups 2
        case((2, 3, 3, 2), (2, 3), 4, dilation=(2, 1)),  # the dilated kernel covers the whole image
        # Winograd: "auto" takes it on CPU (5 input channels, 3x3, stride 1); an odd output width
        case((3, 4, 3, 5), (3, 3), 2, padding="SAME"),
        # and explicitly (every backend): asymmetric padding, an odd output height
        case((2, 5, 6, 3), (3, 3), 4, padding=((2, 0), (1, 1)), impl="winograd"),
    ]
    # the other formulation on the three examples that hold stride > kernel, unread rows, padding
    # beyond the kernel, dilation, a batch of one and groups (the suite's time is the limit)
    other = "xla" if jax.default_backend() == "cpu" else "gemm"
    return examples + [Example(e.args, dict(e.params, impl=other)) for e in (examples[0], examples[1], examples[3])]


@defop(static=("stride", "padding", "dilation", "groups", "impl"), check=_check_conv2d, examples=_conv2d_examples)
def conv2d(
    x: jax.Array, w: jax.Array, b: jax.Array, stride: Any = 1, padding: Padding = "VALID", dilation: Any = 1,
    groups: int = 1, impl: str = "auto",
) -> jax.Array:
    r"""2-D cross-correlation plus bias; ``x`` NHWC (N, H, W, C_in), ``w`` HWIO (KH, KW, C_in // groups,
    C_out), ``b`` (C_out,). ``stride`` and ``dilation`` are an int or a pair (rows, columns); ``padding``
    is "VALID", "SAME", an int p (p on every side) or ((top, bottom), (left, right)). Equal to
    ``lax.conv_general_dilated`` with ``feature_group_count=groups``, plus ``b``; PyTorch's weight is
    ``w.transpose(3, 2, 0, 1)``.

    Derivation. Let $\tilde{x}$ (``xp``) be ``x`` zero-padded by $(t, b')$ rows and $(l, r)$
    columns ($b'$ the bottom padding; $b$ is the bias), $s$ the stride, $d$ the dilation,
    $C_g = C_{\mathrm{in}} / \mathrm{groups}$ and $G(o)$ the group of output channel $o$ (output
    channels are split into ``groups`` consecutive blocks, input channels likewise). Then

    $$
    y_{n,i,j,o} = b_o + \sum_{p,q,c} \tilde{x}_{n,\, i s + p d,\, j s + q d,\, G(o) C_g + c}\, w_{p,q,c,o}
    $$

    (one spatial axis written from here on; the other is the same). The dilated kernel spans
    $E = (K - 1) d + 1$; the output has $H_o = \lfloor (H + t + b' - E) / s \rfloor + 1$ rows, and
    the last $u = (H + t + b' - E) \bmod s$ rows of $\tilde{x}$ are read by no window: their
    cotangent is 0.

    The bias: $\bar{b}_o = \sum_{n,i,j} g_{n,i,j,o}$, the transpose of broadcasting $b$.

    The input: each $\tilde{x}_{n,a,\cdot,G(o) C_g + c}$ meets $w_{p,\cdot,c,o}$ in output row $i$
    when $a = i s + p d$. Let $\hat{g}$ (``gs``) be $g$ with $s - 1$ zeros between its rows
    ($\hat{g}_{i s} = g_i$); then $\bar{\tilde{x}}_a = \sum_p \hat{g}_{a - p d}\, w_p$ and,
    substituting $p = K - 1 - p'$,

    $$
    \bar{\tilde{x}}_a = \sum_{p'} \hat{g}_{a - E + 1 + p' d}\, w_{K - 1 - p'} ,
    $$

    a stride-1 correlation of $\hat{g}$ (``lhs_dilation = s``) with the spatially flipped kernel
    (``rhs_dilation = d``) whose in and out channel axes are exchanged within each group $k$:

    $$
    \check{w}_{p',q',o,k C_g + c} = w_{K-1-p',\, K-1-q',\, c,\, k C_o + o},
    \qquad C_o = C_{\mathrm{out}} / \mathrm{groups}
    $$

    ($\check{w}$ is ``w_t``), so one group's outputs feed that group's inputs
    (``feature_group_count = groups``). $\hat{g}$ is padded by $E - 1$ before and after; dropping
    the first $t$ and last $b'$ rows of $\bar{\tilde{x}}$ (the padding) and appending the $u$
    unread zero rows gives $\bar{x}$ directly: pads $(E - 1 - t,\ E - 1 - b' + u)$, negative where
    the padding exceeds $E - 1$ (XLA crops there).

    The kernel:

    $$
    \bar{w}_{p,q,c,o} = \sum_{n,i,j} \tilde{x}_{n,\, i s + p d,\, j s + q d,\, G(o) C_g + c}\, g_{n,i,j,o} ,
    $$

    a correlation of $\tilde{x}$ with $g$ as the kernel, dilated by $s$, stepping by $d$, the batch
    $n$ contracted as if it were a channel and $C_{\mathrm{in}}$ playing the batch (``CHWN`` x
    ``IHWO`` -> ``HWNC``). The pads are $(t,\ b' - u)$, so exactly $K$ rows come out. With groups,
    each group of output channels only meets its own $C_g$ input channels:
    ``batch_group_count = groups`` splits ``C_in`` (the batch of this correlation) into the same
    blocks as ``C_out``.

    Three formulations compute the forward and these cotangents (``impl``; the reference is always
    ``lax.conv_general_dilated``). ``"xla"``: the two convolutions just described, which GPUs run
    with cuDNN. ``"gemm"``: with $\operatorname{take}(\tilde{x}, (p d, q d))$ the
    ``(N, Ho, Wo, C_in)`` slice holding every window's element at kernel offset $(p, q)$
    (``manualgrad.ops.windows``),

    * $y = \sum_{p,q} \operatorname{take}(\tilde{x}, (p d, q d))\, w_{p,q}$: one GEMM per offset, an
      elementwise multiply-add when ``C_in`` is 1;
    * $\bar{\tilde{x}} = \sum_{p,q} \operatorname{put}(g\, w_{p,q}^\top, (p d, q d))$ (col2im: each
      offset's product sent back to the positions it read), cropped to $\bar{x}$;
    * $\bar{w}_{p,q} = \operatorname{take}(\tilde{x}, (p d, q d))^\top g$ for all offsets at once:
      one GEMM of the stacked slices (im2col, ``KH KW C_in`` rows) with $g$, batch and space
      folded into the contraction.

    With groups each product runs per group (an einsum with the group as a batch axis).
    ``"winograd"`` (a 3x3 kernel, stride 1, no dilation, one group): Winograd's F(2x2, 3x3), 16
    GEMMs of transformed 4x4 tiles in place of 9 per-offset ones, for the forward, $\bar{x}$ and
    $\bar{w}$ alike (``manualgrad.ops.winograd`` holds the transforms and their transposes); it
    runs the batch in slices with ``lax.map`` / ``lax.scan``.

    ``"auto"`` (the default) chooses per backend with ``lax.platform_dependent``: xla on GPUs; on
    CPU gemm when each group has at most ``FEW_CHANNELS`` (4) input channels, else Winograd where it
    applies, else xla with the weight gradient's convolution summed over batch slices of
    ``WEIGHT_GRAD_CHUNK`` (64) examples ($\bar{w}$ is a sum over the batch, so the slices' $\bar{w}$
    add up to it). Measured on the 2-core CPU (BENCHMARKS.md, per-layer rows): for the MNIST CNN's
    first convolution (one input channel) XLA's convolutions run at 15-22 GFLOP/s, the gemm forward
    and weight gradient 2.2-2.6x faster; for its second (32 -> 64 channels, 14x14) Winograd's
    forward and backward take 14.1 ms at batch 128 and 60 ms at 512 against 23 and 288 ms for
    ``jax.vjp`` of the lax convolution; its temporaries are one slice's transformed tiles (16 MB:
    more than the lax convolution's 10 MB at batch 128, less than its 39 MB at 512). XLA's
    weight-gradient convolution slows from 14 ms at batch 128 to 229 ms at 512, against 54-61 ms
    in slices of 64. GPUs keep XLA's convolutions (cuDNN).

    Residuals: ``x`` and ``w``.
    """
    geo = _geometry(np.shape(x), np.shape(w), stride, padding, dilation)
    return _xla_forward(x, w, geo, groups) + b


def _xla_forward(x: jax.Array, w: jax.Array, geo: _Geometry, groups: int) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, geo.strides, geo.pads, rhs_dilation=geo.dilation, dimension_numbers=_NHWC, feature_group_count=groups
    )


def _xla_backward(
    x: jax.Array, w: jax.Array, g: jax.Array, geo: _Geometry, groups: int, chunk: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """``(x_bar, w_bar)`` as two convolutions (the docstring's derivation); with ``chunk``, ``w_bar``
    is the sum of the same convolution over batch slices of at most ``chunk`` examples."""
    kh, kw, c_group, c_out = np.shape(w)
    # x_bar: g dilated by the stride, against the flipped kernel with in/out exchanged per group
    w_t = jnp.flip(w, (0, 1)).reshape(kh, kw, c_group, groups, c_out // groups)
    w_t = w_t.transpose(0, 1, 4, 3, 2).reshape(kh, kw, c_out // groups, groups * c_group)
    x_pads = [(e - 1 - lo, e - 1 - hi + u) for e, (lo, hi), u in zip(geo.extent, geo.pads, geo.unread)]
    x_bar = lax.conv_general_dilated(
        g, w_t, (1, 1), x_pads, lhs_dilation=geo.strides, rhs_dilation=geo.dilation,
        dimension_numbers=_NHWC, feature_group_count=groups,
    )
    # w_bar: x against g as the kernel, the batch contracted, C_in as the batch
    w_pads = [(lo, hi - u) for (lo, hi), u in zip(geo.pads, geo.unread)]

    def weight_grad(x, g):
        return lax.conv_general_dilated(
            x, g, geo.dilation, w_pads, rhs_dilation=geo.strides,
            dimension_numbers=("CHWN", "IHWO", "HWNC"), batch_group_count=groups,
        )

    step = chunk or max(x.shape[0], 1)
    acc = jnp.promote_types(w.dtype, jnp.float32)  # the slices' sum, in float32 at least
    w_bar = sum((weight_grad(x[i : i + step], g[i : i + step]).astype(acc) for i in range(step, x.shape[0], step)),
                weight_grad(x[:step], g[:step]).astype(acc))
    return x_bar, w_bar.astype(w.dtype)


def _taps(geo: _Geometry, w_shape: tuple) -> list[tuple[int, int, tuple[int, int]]]:
    """The kernel's offsets ``(p, q)`` with the padded input row and column each one reads first."""
    (kh, kw), (dh, dw) = w_shape[:2], geo.dilation
    return [(p, q, (p * dh, q * dw)) for p in range(kh) for q in range(kw)]


def _padded(x: jax.Array, geo: _Geometry) -> jax.Array:
    (t, b_), (l, r) = geo.pads
    return jnp.pad(x, ((0, 0), (t, b_), (l, r), (0, 0)))


def _grouped(a: jax.Array, groups: int) -> jax.Array:
    """``(..., C)`` as ``(..., groups, C // groups)``: channel block ``k`` belongs to group ``k``."""
    return a if groups == 1 else a.reshape(*a.shape[:-1], groups, a.shape[-1] // groups)


def _per_group(spec: str, a: jax.Array, b: jax.Array, groups: int) -> jax.Array:
    """``einsum(spec, a, b)`` with the group axis ``g`` of ``_grouped`` operands; with one group
    the axis is left out, so XLA sees plain GEMMs (a size-1 batch axis costs it transposes)."""
    return jnp.einsum(spec if groups > 1 else spec.replace("g", ""), a, b)


def _gemm_forward(x: jax.Array, w: jax.Array, geo: _Geometry, groups: int) -> jax.Array:
    """``y = sum_{p, q} take(xp, (p d, q d)) @ w[p, q]``: one GEMM per kernel offset (an elementwise
    multiply-add when ``C_in`` is 1), each over every window at once."""
    n, c_out = x.shape[0], w.shape[3]
    xp, out = _padded(x, geo), geo.out
    y = sum(
        _per_group("nhwgc,cgo->nhwgo", _grouped(windows.take(xp, start, geo.strides, out), groups),
                   _grouped(w[p, q], groups), groups)
        for p, q, start in _taps(geo, w.shape)
    )
    return y.reshape(n, *out, c_out)


def _gemm_backward(x: jax.Array, w: jax.Array, g: jax.Array, geo: _Geometry, groups: int) -> tuple[jax.Array, jax.Array]:
    """``x_bar`` as a sum over kernel offsets of ``put(g @ w[p, q]^T)`` (col2im), ``w_bar`` as one GEMM
    of the stacked offsets' windows (im2col) with ``g``, batch and space contracted."""
    kh, kw, c_group, c_out = w.shape
    (t, _), (l, _) = geo.pads
    xp, out, gg = _padded(x, geo), g.shape[1:3], _grouped(g, groups)
    taps = _taps(geo, w.shape)
    xp_bar = sum(
        windows.put(
            _per_group("nhwgo,cgo->nhwgc", gg, _grouped(w[p, q], groups), groups).reshape(*g.shape[:3], x.shape[3]),
            start, geo.strides, xp.shape[1:3],
        )
        for p, q, start in taps
    )
    x_bar = xp_bar[:, t : t + x.shape[1], l : l + x.shape[2], :]
    # the offsets' windows stacked in front (im2col, offset-major): with one input channel the
    # product is a plain (KH KW, m) x (m, C_out) GEMM, no transposed copy of the stack
    cols = jnp.stack([_grouped(windows.take(xp, start, geo.strides, out), groups) for _, _, start in taps])
    m = math.prod(g.shape[:3])  # batch and space, folded into one contraction axis
    w_bar = _per_group("kmgc,mgo->kcgo", cols.reshape(len(taps), m, *cols.shape[4:]), gg.reshape(m, *gg.shape[3:]), groups)
    w_bar = w_bar.reshape(kh, kw, c_group, c_out)
    return x_bar, w_bar


def _winograd_fits(w_shape: tuple, geo: _Geometry, groups: int) -> bool:
    """Whether the Winograd formulation applies: a 3x3 kernel, stride 1, no dilation, one group."""
    return tuple(w_shape[:2]) == (3, 3) and geo.strides == (1, 1) and geo.dilation == (1, 1) and groups == 1


def _winograd_forward(x: jax.Array, w: jax.Array, geo: _Geometry, groups: int) -> jax.Array:
    return winograd.conv(x, w, geo.pads)


def _winograd_backward(x: jax.Array, w: jax.Array, g: jax.Array, geo: _Geometry, groups: int) -> tuple[jax.Array, jax.Array]:
    return winograd.conv_vjp(x, w, g, geo.pads)


#: the formulations of [conv2d][manualgrad.ops.conv2d]'s forward and backward (``impl``)
IMPLS = ("auto", "gemm", "xla", "winograd")
#: ``"auto"`` takes the gemm formulation on CPU up to this many input channels per group
FEW_CHANNELS = 4
#: ``"auto"`` on CPU otherwise (xla): the weight gradient's convolution per this many examples
WEIGHT_GRAD_CHUNK = 64


def _cpu_impl(w_shape: tuple, geo: _Geometry, groups: int) -> str:
    """The formulation ``"auto"`` takes on CPU: gemm for few input channels per group, Winograd for
    a 3x3 kernel with stride 1, no dilation and one group, else xla."""
    if w_shape[2] <= FEW_CHANNELS:
        return "gemm"
    return "winograd" if _winograd_fits(w_shape, geo, groups) else "xla"


def _by_impl(impl: str, args: tuple, rules: dict[str, Callable], on_cpu: Callable) -> Any:
    """``rules[impl](*args)``; ``"auto"`` chooses per backend with ``lax.platform_dependent``:
    ``on_cpu`` on CPU, xla elsewhere."""
    if impl != "auto":
        return rules[impl](*args)
    return lax.platform_dependent(*args, cpu=on_cpu, default=rules["xla"])


def _rules(geo: _Geometry, groups: int, **by_impl: Callable) -> dict[str, Callable]:
    return {name: functools.partial(f, geo=geo, groups=groups) for name, f in by_impl.items()}


def conv2d_fwd(
    x: jax.Array, w: jax.Array, b: jax.Array, stride: Any = 1, padding: Padding = "VALID", dilation: Any = 1,
    groups: int = 1, impl: str = "auto",
) -> tuple[jax.Array, tuple]:
    geo = _geometry(np.shape(x), np.shape(w), stride, padding, dilation)
    rules = _rules(geo, groups, gemm=_gemm_forward, xla=_xla_forward, winograd=_winograd_forward)
    y = _by_impl(impl, (x, w), rules, rules[_cpu_impl(np.shape(w), geo, groups)])
    return y + b, (x, w)


def conv2d_bwd(
    res: tuple, g: jax.Array, stride: Any = 1, padding: Padding = "VALID", dilation: Any = 1, groups: int = 1,
    impl: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, w = res
    geo = _geometry(np.shape(x), np.shape(w), stride, padding, dilation)
    rules = _rules(geo, groups, gemm=_gemm_backward, xla=_xla_backward, winograd=_winograd_backward)
    on_cpu = _cpu_impl(np.shape(w), geo, groups)  # with xla, the weight gradient in batch slices
    cpu_rule = functools.partial(rules["xla"], chunk=WEIGHT_GRAD_CHUNK) if on_cpu == "xla" else rules[on_cpu]
    x_bar, w_bar = _by_impl(impl, (x, w, g), rules, cpu_rule)
    return x_bar, w_bar, jnp.sum(g, axis=(0, 1, 2))


conv2d.defvjp(conv2d_fwd, conv2d_bwd)
