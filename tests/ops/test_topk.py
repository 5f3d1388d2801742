"""turbogen.ops.topk: torch.topk's values with a fully specified order, the same on every backend."""

from __future__ import annotations

import pytest
import torch

from turbogen import ops, ref

from conftest import backend_params
from tolerances import assert_bit_exact

NAN = float("nan")
INF = float("inf")


def scores_with_ties(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Few distinct values (many ties), some -inf, +inf and NaN."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(-4, 4, (rows, cols), generator=generator).float()
    special = torch.rand(rows, cols, generator=generator)
    scores[special < 0.05] = -INF
    scores[(special > 0.5) & (special < 0.52)] = INF
    scores[special > 0.98] = NAN
    return scores


def beam_step_scores(batch: int, beams: int, vocab: int, seed: int) -> torch.Tensor:
    """What beam search ranks: log-probabilities plus each beam's score, beams 1.. at -1e9 (first step)."""
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(batch * beams, vocab, generator=generator) * 3, dim=-1)
    running = torch.zeros(batch, beams, 1)
    running[:, 1:] = -1e9
    return (log_probs.view(batch, beams, vocab) + running).view(batch, beams * vocab)


def expected_order(row: torch.Tensor, k: int) -> list[int]:
    """The contract, in plain Python: NaN first, then larger values, then lower index."""
    values = row.tolist()
    return sorted(range(len(values)),
                  key=lambda i: (0 if values[i] != values[i] else 1, -values[i] if values[i] == values[i] else 0, i))[:k]


def test_reference_is_the_specified_order():
    scores = scores_with_ties(5, 300, seed=1)
    for k in (0, 1, 7, 300):
        values, indices = ref.topk(scores, k)
        for r in range(scores.shape[0]):
            assert indices[r].tolist() == expected_order(scores[r], k)
        assert_bit_exact(values, scores.gather(1, indices))


def test_values_equal_torch_topk():
    scores = beam_step_scores(3, 4, 5000, seed=2)
    expected = torch.topk(scores, 8)
    values, indices = ops.topk(scores, 8)
    assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices)


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
@pytest.mark.parametrize("rows,cols,k", [(1, 128000, 8), (8, 4 * 3001, 8), (3, 64, 64), (2, 33, 5), (4, 31, 1),
                                         (1, 1, 1), (5, 200, 0), (0, 10, 3), (2, 70, 70)])
def test_backend_matches_reference(backend, rows, cols, k):
    for scores in (torch.randn(rows, cols, generator=torch.Generator().manual_seed(cols)),
                   scores_with_ties(rows, cols, seed=k),
                   beam_step_scores(rows, 1, cols, seed=3) if rows else torch.empty(0, cols)):
        values, indices = ops.topk(scores, k, backend=backend)
        expected_values, expected_indices = ops.topk(scores, k, backend="ref")
        assert indices.dtype == torch.int64 and values.dtype == torch.float32
        assert torch.equal(indices, expected_indices)
        assert_bit_exact(values, expected_values)  # selected, not computed: the same floats


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
def test_all_nan_and_all_equal_rows(backend):
    scores = torch.stack([torch.full((100,), NAN), torch.zeros(100), torch.full((100,), -INF)])
    values, indices = ops.topk(scores, 5, backend=backend)
    assert indices.tolist() == [[0, 1, 2, 3, 4]] * 3
    assert torch.isnan(values[0]).all() and values[1].eq(0).all() and values[2].eq(-INF).all()


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
def test_strided_rows_are_read_correctly(backend):
    wide = torch.randn(4, 900, generator=torch.Generator().manual_seed(5))
    view = wide[:, 50:850]
    assert view.stride() == (900, 1)
    expected = ops.topk(view.contiguous(), 12, backend="ref")
    values, indices = ops.topk(view, 12, backend=backend)
    assert torch.equal(values, expected[0]) and torch.equal(indices, expected[1])


@pytest.mark.parametrize("scores,k,error,name", [
    (torch.zeros(4, 10), 11, ValueError, "k"),
    (torch.zeros(4, 10), -1, ValueError, "k"),
    (torch.zeros(4, 10), 2.0, TypeError, "k"),
    (torch.zeros(4, 10), True, TypeError, "k"),
    (torch.zeros(10), 2, ValueError, "scores"),
    (torch.zeros(4, 10, dtype=torch.float64), 2, TypeError, "scores"),
    (torch.zeros(10, 4).t(), 2, ValueError, "scores"),
    ([[0.0, 1.0]], 1, TypeError, "scores"),
])
def test_invalid_arguments_name_the_argument(scores, k, error, name):
    with pytest.raises(error, match=name):
        ops.topk(scores, k)


def test_backends_it_does_not_have_are_refused():
    with pytest.raises(ValueError, match="no triton implementation"):
        ops.topk(torch.zeros(2, 5), 1, backend="triton")


# opcheck and compiling ops.topk: tests/ops/test_registry.py, for every op; the extension's own
# argument checks: tests/ops/test_native_bounds.py.

def test_reference_compiles_fullgraph():
    scores = scores_with_ties(3, 40, seed=7)
    compiled = torch.compile(lambda s: ref.topk(s, 6), fullgraph=True)
    values, indices = compiled(scores)
    assert torch.equal(indices, ref.topk(scores, 6)[1])
