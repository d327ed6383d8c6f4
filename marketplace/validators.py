"""The unified social credit code (统一社会信用代码, GB 32100-2015)."""

from __future__ import annotations

from django.core.exceptions import ValidationError

# The code's alphabet: digits and capitals without I, O, Z, S, V.
CREDIT_CODE_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
# Characters 9-17 are the organisation code of GB 11714, which has a check character of its own.
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_REGISTRATION_AUTHORITIES = set("123456789ABNY")


def credit_code_check_char(first17: str) -> str:
    total = sum(CREDIT_CODE_ALPHABET.index(c) * w for c, w in zip(first17, _CREDIT_WEIGHTS, strict=True))
    return CREDIT_CODE_ALPHABET[(31 - total % 31) % 31]


def org_code_check_char(body8: str) -> str:
    total = sum(int(c, 36) * w for c, w in zip(body8, _ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def validate_credit_code(value: str) -> None:
    """Raise ValidationError unless `value` is a well-formed code with correct check characters."""
    if len(value) != 18:
        raise ValidationError("A unified social credit code has 18 characters; this one has %(n)d.", params={"n": len(value)}, code="length")
    bad = sorted({c for c in value if c not in CREDIT_CODE_ALPHABET})
    if bad:
        raise ValidationError(
            "Characters not allowed in a unified social credit code: %(bad)s (use digits and capitals without I, O, Z, S, V).",
            params={"bad": " ".join(bad)},
            code="alphabet",
        )
    if value[0] not in _REGISTRATION_AUTHORITIES:
        raise ValidationError("The first character is not a registration authority code.", code="authority")
    if org_code_check_char(value[8:16]) != value[16]:
        raise ValidationError("The organisation code (characters 9-17) fails its check character.", code="org_check")
    if credit_code_check_char(value[:17]) != value[17]:
        raise ValidationError("The check character (the 18th) does not match; the code is mistyped.", code="check")


def make_credit_code(prefix8: str, org_body8: str) -> str:
    """Build a valid code from its first 8 characters and an 8-character organisation code body."""
    first16 = prefix8 + org_body8
    first17 = first16 + org_code_check_char(org_body8)
    return first17 + credit_code_check_char(first17)
