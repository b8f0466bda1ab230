"""Halo planning for nbconv.dask: which slices of which chunks each task needs, in plain integers.

No dask and no kernels here: every function works on one axis at a time, and nbconv.dask takes the
product over the axes. Coordinates along a spatial axis of an input of length n with pads (pb, pa):

- q, a *padded position*, runs over [-pb, n + pa); q in [0, n) is the input element q, q < 0 and q >= n
  lie in the padding, whose content is the padding mode's (``nbconv._padding``, the one definition).
- Output j (0 <= j < m) reads q = j * s - pb + t * d for taps t < k: its *window* is
  [j * s - pb, j * s - pb + ext) with ext = d * (k - 1) + 1; outputs [ja, jb) read the window
  [ja * s - pb, (jb - 1) * s - pb + ext).

A task that computes outputs [ja, jb) calls the in-memory kernel on that window only:

- zeros padding: the window clipped to the input [0, n), with the clipped-off part passed to the kernel
  as (zero) padding. Interior chunk boundaries get halos; only the array's outer boundary is padded.
- reflect / replicate / circular: the window is gathered element by element from the global input
  through the padding map (the padded border is built from the global array, so a chunk at the edge
  reflects, replicates or wraps exactly like the in-memory call), and the kernel pads nothing.

Either way the kernel runs in mode "zeros", and every output element is computed by exactly one task.
The input gradient of a chunk [b0, b1) sums, over every padded position q whose source lies in the
chunk (the chunk itself, and for the non-zero modes the border positions that copy it), the
gradient of the outputs that read q. Those positions form at most three runs per axis ("boxes"); for
each box the task takes the outputs that touch it and asks the kernel for the gradient on the box
only (the rest of the window is passed as zero padding, whose gradient the kernel drops), then adds
it at the box's sources (reversed for reflect, summed onto one element for replicate).
"""
from bisect import bisect_right
from typing import NamedTuple

from . import _padding


def _floordiv(a, b):
    return a // b


def _ceildiv(a, b):
    return -(-a // b)


class Axis(NamedTuple):
    """One spatial axis of a convolution: input length n, output length m, kernel k, stride s,
    dilation d, pads (pb, pa) and the padding-mode code (nbconv._padding.CODES)."""

    n: int
    m: int
    k: int
    s: int
    d: int
    pb: int
    pa: int
    mode: int

    @property
    def ext(self):
        return self.d * (self.k - 1) + 1

    def window(self, ja, jb):
        """[lo, hi): the padded positions that outputs [ja, jb) read (jb > ja)."""
        return ja * self.s - self.pb, (jb - 1) * self.s - self.pb + self.ext

    def touching(self, qa, qb):
        """[ja, jb): the outputs (within [0, m)) whose window meets the padded positions [qa, qb)."""
        ja = max(0, _floordiv(qa + self.pb - self.ext, self.s) + 1)
        jb = min(self.m, _ceildiv(qb + self.pb, self.s))
        return ja, max(ja, jb)

    def segments(self):
        """The padded range as runs (qa, qb, src0, step): q in [qa, qb) holds input element
        src0 + (q - qa) * step. The interior is (0, n, 0, 1); for the non-zero modes each border is one
        affine run (step -1 reflect, 0 replicate, +1 circular: validation bounds the pads so that one
        reflection or wrap reaches the input)."""
        segs = []
        if self.mode != _padding.ZEROS and self.pb:
            segs.append(self._segment(-self.pb, 0))
        if self.n:
            segs.append((0, self.n, 0, 1))
        if self.mode != _padding.ZEROS and self.pa:
            segs.append(self._segment(self.n, self.n + self.pa))
        return segs

    def _segment(self, qa, qb):
        src0 = _padding.source_index(qa, self.n, self.mode)
        step = _padding.source_index(qa + 1, self.n, self.mode) - src0 if qb - qa > 1 else 1
        last = _padding.source_index(qb - 1, self.n, self.mode)
        if step not in (-1, 0, 1) or last != src0 + (qb - 1 - qa) * step:  # pragma: no cover - validation
            raise AssertionError(f"padding map is not affine on [{qa}, {qb}) (n={self.n}, mode={self.mode})")
        return qa, qb, src0, step


class Source(NamedTuple):
    """What a task computing outputs [ja, jb) reads along one axis: `runs` of input elements
    (start, length, step) in window order, and the `pads` (before, after) the kernel adds in mode
    "zeros". runs == () means the window holds no input element (zero padding only)."""

    runs: tuple
    pads: tuple


def forward_source(ax, ja, jb):
    """The input that outputs [ja, jb) read (see the module docstring)."""
    lo, hi = ax.window(ja, jb)
    if ax.mode == _padding.ZEROS:
        clo, chi = max(lo, 0), min(hi, ax.n)
        if clo >= chi:
            return Source((), (0, 0))
        return Source(((clo, chi - clo, 1),), (clo - lo, hi - chi))
    runs = []
    for qa, qb, src0, step in ax.segments():
        a, b = max(lo, qa), min(hi, qb)
        if a < b:
            runs.append((src0 + (a - qa) * step, b - a, step))
    return Source(tuple(runs), (0, 0))


class Sub(NamedTuple):
    """One box of an input-gradient task along one axis: outputs [ja, jb), the kernel's view of the box
    (`length` elements after `pads[0]` padded positions, `pads[1]` after), and where the gradient goes in
    the chunk: element i of the box adds to dest0 + i * step (step 0: all of it onto dest0)."""

    ja: int
    jb: int
    length: int
    pads: tuple
    dest0: int
    step: int


def input_grad_subs(ax, b0, b1):
    """The boxes whose gradient lands in the chunk [b0, b1) of the input (see the module docstring)."""
    subs = []
    for sa, sb, src0, step in ax.segments():
        if step == 1:
            qa, qb = sa + b0 - src0, sa + b1 - src0
        elif step == -1:
            qa, qb = sa + src0 - b1 + 1, sa + src0 - b0 + 1
        elif b0 <= src0 < b1:
            qa, qb = sa, sb
        else:
            continue
        qa, qb = max(qa, sa), min(qb, sb)
        if qa >= qb:
            continue
        ja, jb = ax.touching(qa, qb)
        if ja >= jb:
            continue
        lo, hi = ax.window(ja, jb)
        xa, xb = max(qa, lo), min(qb, hi)
        if xa >= xb:
            continue
        dest0 = src0 + (xa - sa) * step - b0
        subs.append(Sub(ja, jb, xb - xa, (xa - lo, hi - xb), dest0, step))
    return subs


def bounds(chunks):
    """Chunk sizes -> offsets [0, c0, c0 + c1, ..., total]."""
    out = [0]
    for c in chunks:
        out.append(out[-1] + int(c))
    return out


def split_runs(runs, offsets):
    """Runs (start, length, step) of global indices -> pieces (chunk, local start, length, step) that each
    lie in one chunk (chunks given by their offsets). A step-0 run is one element repeated."""
    pieces = []
    for start, length, step in runs:
        pos, left = start, length
        while left:
            i = bisect_right(offsets, pos) - 1
            if step == 0:
                take = left
            elif step == 1:
                take = min(left, offsets[i + 1] - pos)
            else:
                take = min(left, pos - offsets[i] + 1)
            pieces.append((i, pos - offsets[i], take, step))
            pos += step * take
            left -= take
    return pieces


def forward_chunks(ax, x_chunks):
    """Output chunk sizes of a convolution along one axis, from the input's chunks: output j goes with the
    input chunk that holds the centre of its window (so a stride-1 "same" convolution keeps the input's
    chunks); empty chunks are dropped."""
    c = (ax.ext - 1) // 2
    cuts = [min(max(_ceildiv(b + ax.pb - c, ax.s), 0), ax.m) for b in bounds(x_chunks)]
    cuts[0], cuts[-1] = 0, ax.m
    return tuple(b - a for a, b in zip(cuts, cuts[1:]) if b > a) or (ax.m,)


def transpose_chunks(ax, in_chunks):
    """Result chunk sizes of a transposed convolution (result length ax.n, input length ax.m) from its
    input's chunks: input element j goes with the result chunk that holds the centre of its footprint."""
    c = (ax.ext - 1) // 2
    cuts = [min(max(b * ax.s - ax.pb + c, 0), ax.n) for b in bounds(in_chunks)]
    cuts[0], cuts[-1] = 0, ax.n
    return tuple(b - a for a, b in zip(cuts, cuts[1:]) if b > a) or (ax.n,)
