"""Property-based checks of the normalizer (Hypothesis)."""

from __future__ import annotations

import datetime as dt
import re
import string
import unicodedata

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.normalize import (
    HASHED_FIELDS,
    OMISSION_REASONS,
    SHA256_OF_EMPTY,
    Normalized,
    Normalizer,
    Omission,
    _parse_digits,
    _parse_fields,
    _parse_steps_agree,
    _phone,
)
from consumer.validate import _check_normalized_user_data, _check_user_data

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Fields whose rule reads no country; ph/st/zp are checked with their own hint below.
UNHINTED = [f for f in HASHED_FIELDS if f not in ("ph", "st", "zp")]

NORMALIZER = Normalizer(cache_size=0, clock=lambda: 1_800_000_000.0)
# No per-example deadline: the machine is shared and the first call loads pycountry's data, so a
# timing limit would only make these tests flaky; they check values, not speed.

raw_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
    max_size=40,
)
# Text shaped like real identifiers reaches the field rules' success paths far more often.
identifier_text = st.one_of(
    raw_text,
    st.text(alphabet=string.ascii_letters + string.digits + " -.'@+()/", max_size=30),
    st.from_regex(r"[A-Za-z.]{1,12}@[a-z]{1,8}\.[a-z]{2,4}", fullmatch=True),
    st.from_regex(r"\+?[0-9 ()-]{7,18}", fullmatch=True),
    st.dates(min_value=dt.date(1890, 1, 1), max_value=dt.date(2030, 1, 1)).map(
        lambda d: d.strftime("%m/%d/%Y")
    ),
)
hints = st.sampled_from([None, "US", "GB", "DE", "FR", "JP", "BR", "IN", "Georgia"])


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(UNHINTED), value=identifier_text)
def test_normalizing_a_normalized_value_changes_nothing(field: str, value: str) -> None:
    first = NORMALIZER.normalize(field, value)
    if isinstance(first, Normalized):
        again = NORMALIZER.normalize(field, first.normalized)
        assert isinstance(again, Normalized)
        assert again.normalized == first.normalized or _recomposable(first.normalized)


def _recomposable(text: str) -> bool:
    """The one exception to idempotence the contract makes: NFC comes before lowercasing and is not
    applied after it, so a lowercase letter + combining mark whose capital had no precomposed form
    (Greek capital upsilon + comma above -> upsilon + comma above) is output decomposed, and reading
    that output again composes it (U+1F50). Meta's Pixel hashes the decomposed form."""
    return not unicodedata.is_normalized("NFC", text)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["ph", "st", "zp"]), value=identifier_text, hint=hints)
def test_hinted_fields_are_idempotent_under_the_same_hint(field: str, value: str, hint: str | None) -> None:
    first = NORMALIZER.normalize(field, value, country_hint=hint)
    if isinstance(first, Normalized):
        # Under a hint a phone was parsed by libphonenumber and its output carries the country code,
        # so it is re-read as international ("+" form); without one it is read back as plain digits.
        again_input = "+" + first.normalized if field == "ph" and hint else first.normalized
        again = NORMALIZER.normalize(field, again_input, country_hint=hint)
        assert isinstance(again, Normalized)
        assert again.normalized == first.normalized or _recomposable(first.normalized)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["ph", "st", "zp"]), value=identifier_text)
def test_hinted_fields_without_a_hint_are_idempotent(field: str, value: str) -> None:
    first = NORMALIZER.normalize(field, value)
    if isinstance(first, Normalized):
        again = NORMALIZER.normalize(field, first.normalized)
        assert isinstance(again, Normalized)
        assert again.normalized == first.normalized or _recomposable(first.normalized)


@settings(max_examples=500, deadline=None)
@given(field=st.sampled_from(HASHED_FIELDS), value=identifier_text, hint=hints)
def test_hashes_are_64_lowercase_hex_and_never_of_the_empty_string(
    field: str, value: str, hint: str | None
) -> None:
    result = NORMALIZER.normalize(field, value, country_hint=hint)
    if isinstance(result, Normalized):
        assert SHA256_HEX.fullmatch(result.value)
        assert result.value != SHA256_OF_EMPTY
        assert result.normalized != ""
    else:
        assert result.reason in OMISSION_REASONS


@settings(deadline=None)
@given(field=st.sampled_from(HASHED_FIELDS), digest=st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True))
def test_an_existing_sha256_passes_through(field: str, digest: str) -> None:
    result = NORMALIZER.normalize(field, f" {digest}\n")
    if digest.lower() == SHA256_OF_EMPTY:
        assert result == Omission(field, "hash_of_empty")
    else:
        assert result == Normalized(field, digest.lower(), digest.lower())


@settings(deadline=None)
@given(value=raw_text)
def test_omissions_never_echo_the_value(value: str) -> None:
    for field in HASHED_FIELDS:
        result = NORMALIZER.normalize(field, value)
        if isinstance(result, Omission):
            assert result.reason in OMISSION_REASONS


USER_DATA_KEYS = [*HASHED_FIELDS, "client_ip_address", "client_user_agent", "fbp", "fbc"]


@settings(max_examples=300, deadline=None)
@given(
    raw=st.dictionaries(
        st.sampled_from(USER_DATA_KEYS),
        st.one_of(st.none(), identifier_text, st.lists(identifier_text, max_size=3)),
        max_size=8,
    )
)
def test_validation_may_trust_what_the_normalizer_emits(raw: dict[str, object]) -> None:
    # The mapper validates its own events with normalized=True, which skips the per-value checks
    # (present, SHA-256 shaped) because user_data() guarantees them: the verdict must be the same.
    out = NORMALIZER.user_data(raw).user_data
    for key, value in out.items():
        values = value if isinstance(value, list) else [value]
        assert values and all(isinstance(v, str) and v for v in values), key
        if key in HASHED_FIELDS:
            assert all(SHA256_HEX.fullmatch(v) for v in values), key
    assert _check_user_data(out) == _check_normalized_user_data(out)


# Phone-shaped text: the plain ASCII forms the shortcut takes, and near misses it must leave alone.
phone_text = st.one_of(
    st.from_regex(r"(\+|00)?[0-9 ().\-]{0,20}", fullmatch=True),
    st.from_regex(r"[0-9 ()\-]{0,4}\+?[0-9 ().\-]{6,16}", fullmatch=True),
    st.text(alphabet="0123456789 ().-+/x#,;ext", max_size=24),
    st.builds(
        lambda a, n, b: a + " " * n + b,
        st.from_regex(r"\+?[0-9]{1,3}", fullmatch=True),
        st.integers(0, 260),
        st.from_regex(r"[0-9]{6,12}", fullmatch=True),
    ),
)
phone_regions = st.sampled_from([None, "US", "GB", "DE", "FR", "IT", "NL", "BR", "IN", "JP", "AU", "RU"])


@settings(max_examples=2000, deadline=None)
@given(text=phone_text, region=phone_regions)
def test_the_phone_shortcut_reads_every_number_as_libphonenumber_reads_the_whole_text(
    text: str, region: str | None
) -> None:
    # `_phone` hands libphonenumber only the digits of plain ASCII numbers; the output must be
    # exactly what it gives for the text as typed (including every refusal).
    assert _phone(text, region) == _phone(text, region, shortcut=False)


ALL_PHONE_REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


@settings(max_examples=3000, deadline=None)
@given(
    reading=st.from_regex(r"\+?[0-9]{0,20}", fullmatch=True),
    region=st.sampled_from([None, *ALL_PHONE_REGIONS]),
)
def test_parse_digits_gives_what_libphonenumber_parse_gives(reading: str, region: str | None) -> None:
    # `_parse_digits` runs only the steps of `phonenumbers.parse` that plain digits take, with the
    # library's own functions: the number (or the refusal) must be the same for any region.
    assert _parse_fields(reading, region, _parse_digits) == _parse_fields(reading, region, phonenumbers.parse)


def test_parse_digits_hands_numbers_to_parse_when_the_librarys_steps_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert _parse_steps_agree()
    real_parse = phonenumbers.parse

    def newer_parse(number: str, region: str | None = None) -> phonenumbers.PhoneNumber:
        # A phonenumbers whose parse does one more thing to national numbers than its steps do.
        parsed = real_parse(number, region)
        if not number.startswith("+"):
            parsed.national_number = (parsed.national_number or 0) + 1
        return parsed

    monkeypatch.setattr(phonenumbers, "parse", newer_parse)
    _parse_steps_agree.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="consumer.normalize"):
            assert not _parse_steps_agree()
        assert "phone numbers take parse" in caplog.text
        assert _parse_fields("02079460123", "GB", _parse_digits) == _parse_fields(
            "02079460123", "GB", newer_parse
        )
        assert _phone("020 7946 0123", "GB") == "442079460124"  # what that parse reads
    finally:
        monkeypatch.undo()
        _parse_steps_agree.cache_clear()
    assert _parse_steps_agree()


def _region_shapes(region: str) -> set[tuple[str, str | None]]:
    """Every example number of a region, written the ways people write them, read in its own region,
    in another one and without one; plus near misses (a digit more, a digit less, extra zeros)."""
    shapes: set[tuple[str, str | None]] = set()
    country_code = phonenumbers.country_code_for_region(region)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    idd = "00"
    if metadata is not None:
        idd = metadata.preferred_international_prefix or metadata.international_prefix or idd
    for kind in phonenumbers.PhoneNumberType.values():
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        national = phonenumbers.national_significant_number(example)
        prefix = (metadata.national_prefix or "") if metadata else ""
        written = {
            phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL),
            phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
            phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164),
            national,
            prefix + national,
            f"{country_code}{national}",
            f"{country_code}{prefix}{national}",
            f"+{country_code}{prefix}{national}",
            f"00{country_code}{national}",
            f"{idd if idd.isdigit() else '00'}{country_code}{national}",
            national[:-1],
            national + "0",
            "0" + national,
            "00" + national,
        }
        for text in written:
            for hint in (region, "US", "GB", "IT", None):
                shapes.add((text, hint))
    return shapes


def test_the_phone_shortcut_reads_every_regions_example_numbers_as_libphonenumber_does() -> None:
    compared = 0
    for region in ALL_PHONE_REGIONS:
        for text, hint in _region_shapes(region):
            assert _phone(text, hint) == _phone(text, hint, shortcut=False), (text, hint)
            compared += 1
    assert compared > 20_000  # every region took part


def test_the_phone_shortcut_changes_nothing_on_the_benchmark_shapes_and_edge_cases() -> None:
    for text, region in [
        ("+1 (650) 555-0123", None),
        ("(212) 555-0123", "US"),
        ("020 7946 0123", "GB"),
        ("06 12 34 01 23", "FR"),
        ("+49 30 90180123", "DE"),
        ("+31 (0)20 123 4567", None),
        ("0 044 20 7946 0018", "GB"),
        ("00 44 20 7946 0018", "US"),
        ("1" + " " * 250 + "6505550123", "US"),  # over libphonenumber's input limit: refused both ways
    ]:
        assert _phone(text, region) == _phone(text, region, shortcut=False), text
