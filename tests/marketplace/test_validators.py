import pytest
from django.core.exceptions import ValidationError

from marketplace import demo
from marketplace.validators import make_credit_code, validate_credit_code


def test_published_example_code_is_valid():
    validate_credit_code("91350100M000100Y43")


@pytest.mark.parametrize("code", [row[3] for row in demo.SUPPLIERS + demo.BUYERS])
def test_demo_codes_are_valid(code):
    validate_credit_code(code)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("91350100M000100Y4", "length"),
        ("91350100M000100Y4O", "alphabet"),  # letter O is not in the alphabet
        ("91350100m000100Y43", "alphabet"),
        ("C1350100M000100Y43", "authority"),
        ("91350100M000100Y53", "org_check"),  # organisation-code check character broken
        ("91350100M000100Y44", "check"),
    ],
)
def test_malformed_codes_are_rejected_with_the_reason(code, error):
    with pytest.raises(ValidationError) as excinfo:
        validate_credit_code(code)
    assert excinfo.value.code == error


def test_single_character_typo_is_always_caught():
    code = make_credit_code("91310115", "MA1GQP01")
    validate_credit_code(code)
    for i in range(8, 18):  # any change to the organisation code or the check character
        for replacement in "0123456789ABCDEFGHJKLMNPQRTUWXY":
            if replacement == code[i]:
                continue
            typo = code[:i] + replacement + code[i + 1 :]
            with pytest.raises(ValidationError):
                validate_credit_code(typo)
