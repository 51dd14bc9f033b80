import pytest

from rasft import math_equal, verify_math
from verify_cases import CASES


@pytest.mark.parametrize("cls,kind,text,gold,equal", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_case(cls, kind, text, gold, equal):
    assert (math_equal if kind == "eq" else verify_math)(text, gold) is equal
