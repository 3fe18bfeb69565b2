"""The captured graphs, pinned: what a compiled step runs, as functionalized aten ops.

Normalized by ``graph_ops``: ``namespace.op`` without overload suffixes or node ids, pure view ops
dropped, the ``aten.`` prefix dropped, repeats folded (``(bmm baddbmm baddbmm) x5`` is five
Newton–Schulz steps). fpolar's own kernels would show as ``fpolar.<op>``; on CPU the default path is
pure torch, so none appear.

Pinned to torch 2.13 (the CI version): decompositions move between releases (e.g. dynamo rewrites
``_foreach_lerp_`` as ``_foreach_sub`` + ``full_like`` + ``_foreach_addcmul`` here), so other versions
skip. To update after an intended change: ``EXPECTTEST_ACCEPT=1 python -m pytest compile_tests/test_graph_snapshot.py``.
"""

from __future__ import annotations

import pytest
import torch

# An optional test package: where it is missing (e.g. a GPU machine), these tests skip and say why.
expecttest = pytest.importorskip(
    "expecttest", reason="graph snapshots need expecttest: pip install expecttest (GPU suite: carry its wheel in .whl/)"
)
TestCase = expecttest.TestCase

import fpolar  # noqa: E402
from compile_cases import MIXED_SHAPES, adamw_hparams, adamw_step, make_problem, polar_hparams, polar_step  # noqa: E402
from graph_ops import aten_graph, compress, op_counts, op_sequence  # noqa: E402

PINNED_TORCH = "2.13"

pytestmark = pytest.mark.skipif(
    not torch.__version__.startswith(PINNED_TORCH + "."),
    reason=f"graph snapshots are pinned to torch {PINNED_TORCH}; this is {torch.__version__}",
)


class TestGraphSnapshot(TestCase):
    def setUp(self) -> None:
        torch._dynamo.reset()

    def test_polargrad_default_step_wide_and_tall(self):
        """One wide and one tall group, default hparams with decoupled decay: momentum (lerp through the
        views of the stacked buffer), Frobenius normalization, 5 NS steps, ⟨O, X⟩, decay, apply — and no
        stack copy of the momentum. nonfinite="skip" adds, first, the max-abs of the grads (one
        fpolar.max_abs op for all grads, isfinite as abs/ne/eq), and per group the gated momentum write (lerp, then
        where(found, M, ·) and copy back: one kernel after fusion, no snapshot of M) and the selects (where:
        zeros into the polar input, 0 step size, decay factor 1); the normalization starts from X / max|X|
        (the second norm and div)."""
        params, grads = make_problem(((4, 8), (8, 4)))
        hp = polar_hparams()
        gm = aten_graph(polar_step, params, grads, fpolar.init_state(params, hp), hp)
        self.assertExpectedInline(compress(op_sequence(gm)), """\
fpolar.max_abs
abs
ne
eq
mul
bitwise_not x2
add x2
lerp
where
copy
zeros
where
linalg_vector_norm
gt
ones_like
where
div
linalg_vector_norm
mul
add
div
(bmm baddbmm baddbmm) x5
mul
sum
mul x2
full
where
mul
rsub
full
where
mul x2
sub
lerp
where
copy
zeros
where
linalg_vector_norm
gt
ones_like
where
div
linalg_vector_norm
mul
add
div
(bmm baddbmm baddbmm) x5
mul
sum
mul x2
full
where
mul
rsub
full
where
mul x2
sub""")

    def test_polargrad_mixed_shapes_op_counts(self):
        """4 shape groups → 4 batched polar calls: 4 norms, 20 Gram bmm, 40 baddbmm."""
        params, grads = make_problem(MIXED_SHAPES)
        hp = polar_hparams()
        gm = aten_graph(polar_step, params, grads, fpolar.init_state(params, hp), hp)
        self.assertExpectedInline(op_counts(op_sequence(gm)), """\
abs x1
add x6
baddbmm x40
bitwise_not x2
bmm x20
cat x1
copy x4
div x8
eq x1
fpolar.max_abs x1
full x8
gt x4
lerp x4
linalg_vector_norm x8
mul x35
ne x1
ones_like x4
rsub x4
sub x7
sum x4
where x20
zeros x4""")

    def test_adamw_step(self):
        """Bias corrections from the step tensors on the device (pow/neg/add), all foreach; under
        nonfinite="skip" the grads' max-abs first (one fpolar.max_abs op), step counts add ~found, bias corrections from
        max(step, 1), and selects (one where per grad, fused by Inductor) instead of the lerp."""
        params, grads = make_problem(((16,), (4, 8)))
        hp = adamw_hparams()
        gm = aten_graph(adamw_step, params, grads, fpolar.init_adamw_state(params, hp), hp)
        self.assertExpectedInline(compress(op_sequence(gm)), """\
fpolar.max_abs
abs
ne
eq
mul
bitwise_not x2
_to_copy
_foreach_add
_foreach_maximum
(_foreach_pow _foreach_neg _foreach_add) x2
_foreach_sqrt
full
where x2
mul
rsub
full
where
_foreach_mul
ones
mul x2
where
_foreach_mul
_foreach_add
ones
mul x2
where
_foreach_mul
_foreach_addcmul
_foreach_sqrt
_foreach_div
_foreach_add
_foreach_reciprocal
_foreach_mul
bitwise_not
_to_copy
_foreach_mul
_foreach_div
_foreach_mul
_foreach_sub
add""")
