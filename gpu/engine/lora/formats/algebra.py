"""Exact rewrites of LoHa's Hadamard and LoKr's Kronecker products as one low-rank product up @ down (float64)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Product:
    """A matrix as `left @ right`, or `left` itself when `right` is None (a whole LoKr factor)."""

    left: torch.Tensor
    right: torch.Tensor | None = None

    @property
    def inner(self) -> int:
        """The inner dimension of its low-rank form: the rank of the product, or the smaller side of a whole matrix."""
        return self.left.shape[1] if self.right is not None else min(self.left.shape)

    def matrix(self) -> torch.Tensor:
        return self.left if self.right is None else self.left @ self.right

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) with up @ down == matrix(): a whole matrix pairs with an identity on its smaller side."""
        if self.right is not None:
            return self.left, self.right
        rows, columns = self.left.shape
        identity = torch.eye(min(rows, columns), dtype=self.left.dtype)
        return (identity, self.left) if rows <= columns else (self.left, identity)


def cp_product(core: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> Product:
    """LyCORIS' CP/Tucker rebuild `einsum("i j ..., i p, j r -> p r ...", core, w_a, w_b)` flattened to
    [p, r × kernel]: as the rank-i product w_a.T @ (core contracted with w_b), exactly."""
    contracted = torch.einsum("ij...,jr->ir...", core, w_b)
    return Product(w_a.T, contracted.reshape(contracted.shape[0], -1))


def hadamard_factors(first: Product, second: Product) -> tuple[torch.Tensor, torch.Tensor]:
    """(A1 B1) ⊙ (A2 B2) = U @ D with U's rows the row-wise Kronecker products of A1's and A2's (face-splitting) and
    D's columns those of B1's and B2's (Khatri–Rao): rank inner1 × inner2."""
    up_1, down_1 = first.factors()
    up_2, down_2 = second.factors()
    up = (up_1[:, :, None] * up_2[:, None, :]).reshape(up_1.shape[0], -1)
    down = (down_1[:, None, :] * down_2[None, :, :]).reshape(-1, down_1.shape[1])
    return up, down


def kronecker_factors(first: Product, second: Product) -> tuple[torch.Tensor, torch.Tensor]:
    """M1 ⊗ M2 = (U1 ⊗ U2) @ (D1 ⊗ D2) (the mixed-product rule): rank inner1 × inner2."""
    (up_1, down_1), (up_2, down_2) = first.factors(), second.factors()
    # torch.kron needs contiguous inputs (it views them; LyCORIS' make_kron makes w2 contiguous for the same reason).
    return torch.kron(up_1.contiguous(), up_2.contiguous()), torch.kron(down_1.contiguous(), down_2.contiguous())
