"""The low-rank rewrites are exact: LoHa's Hadamard and LoKr's Kronecker products, whole factors and CP cores, each
equal (float64, to rounding) to the dense formula, with the rank the rewrite promises."""

from __future__ import annotations

import pytest
import torch

from gpu.engine.lora.formats.algebra import Product, cp_product, hadamard_factors, kronecker_factors


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", [(6, 9), (9, 6), (5, 5)])
def test_a_whole_matrix_splits_against_an_identity_on_its_smaller_side(shape: tuple[int, int]) -> None:
    matrix = randn(*shape)
    up, down = Product(matrix).factors()
    assert torch.equal(up @ down, matrix)
    assert Product(matrix).inner == min(shape) == up.shape[1]


def test_the_hadamard_of_two_products_is_their_face_splitting_times_khatri_rao() -> None:
    first, second = Product(randn(12, 2), randn(2, 20)), Product(randn(12, 3), randn(3, 20))
    up, down = hadamard_factors(first, second)
    assert (up.shape, down.shape) == ((12, 6), (6, 20))
    torch.testing.assert_close(up @ down, first.matrix() * second.matrix(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("whole", [(True, False), (False, True), (True, True), (False, False)])
def test_the_kronecker_of_two_factors_whole_or_products_is_the_kronecker_of_their_factors(
    whole: tuple[bool, bool],
) -> None:
    first = Product(randn(4, 3)) if whole[0] else Product(randn(4, 2), randn(2, 3))
    second = Product(randn(5, 7)) if whole[1] else Product(randn(5, 2), randn(2, 7))
    up, down = kronecker_factors(first, second)
    assert up.shape[1] == first.inner * second.inner
    torch.testing.assert_close(up @ down, torch.kron(first.matrix(), second.matrix()), rtol=1e-12, atol=1e-12)


def test_a_cp_core_rebuilds_as_lycoris_rebuild_tucker_flattened() -> None:
    core, w_a, w_b = randn(3, 3, 3, 3), randn(3, 10), randn(3, 8)
    product = cp_product(core, w_a, w_b)
    expected = torch.einsum("i j ..., i p, j r -> p r ...", core, w_a, w_b)  # lycoris/functional/general.py
    assert product.inner == 3
    torch.testing.assert_close(product.matrix(), expected.reshape(10, -1), rtol=1e-12, atol=1e-12)
