"""A workflow with an annotation that names a type imported for type checkers only:
that one cannot be resolved at run time; the others stay as declared."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from tinyworkflow import workflow

if TYPE_CHECKING:
    from fractions import Fraction


@workflow(name="tw_checking_only")
async def tw_checking_only(ctx, amount: Decimal, share: Fraction = None) -> str:
    return f"{amount!r} {share!r}"
