"""Normalizer behaviour beyond the shared vectors: types, omissions, hints, user_data assembly, cache."""

from __future__ import annotations

import datetime as dt
import hashlib
import unicodedata

import pycountry
import pytest

from consumer.normalize import (
    HASHED_FIELDS,
    MEMO_FIELDS,
    OMISSION_REASONS,
    SHA256_OF_EMPTY,
    UNHASHED_FIELDS,
    Normalized,
    Normalizer,
    Omission,
    UserDataResult,
    country_code,
)
from consumer.us_states import US_STATE_CODES


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def norm(
    field: str, value: object, hint: str | None = None, *, default_phone_region: str | None = None
) -> Normalized | Omission:
    normalizer = Normalizer(default_phone_region=default_phone_region)
    return normalizer.normalize(field, value, country_hint=hint)


def reason(result: Normalized | Omission) -> str:
    assert isinstance(result, Omission), result
    return result.reason


def normalized(result: Normalized | Omission) -> str:
    assert isinstance(result, Normalized), result
    return result.normalized


def test_public_field_tuples() -> None:
    assert HASHED_FIELDS == ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
    assert "client_ip_address" in UNHASHED_FIELDS
    assert not set(HASHED_FIELDS) & set(UNHASHED_FIELDS)


# --- common steps -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1.5, True, b"a@b.co", ["x"], {"a": 1}, object()])
def test_unsupported_types_are_omitted(value: object) -> None:
    assert reason(norm("em", value)) == "invalid_type"


def test_true_does_not_borrow_the_cached_result_of_one() -> None:
    normalizer = Normalizer()
    assert normalized(normalizer.normalize("external_id", 1)) == "1"
    assert reason(normalizer.normalize("external_id", True)) == "invalid_type"


def test_dates_are_only_accepted_for_db() -> None:
    assert reason(norm("fn", dt.date(1997, 2, 16))) == "invalid_type"
    assert normalized(norm("db", dt.date(1997, 2, 16))) == "19970216"


def test_unknown_field_is_omitted() -> None:
    assert reason(norm("email", "a@b.co")) == "unknown_field"


@pytest.mark.parametrize("field", [f for f in HASHED_FIELDS if f != "external_id"])
def test_md5_is_not_accepted_as_a_hash(field: str) -> None:
    assert reason(norm(field, hashlib.md5(b"x").hexdigest().upper())) == "md5_not_accepted"


def test_a_32_hex_external_id_is_an_ordinary_id_and_hashed() -> None:
    uuid_hex = "0123456789abcdef0123456789abcdef"
    result = norm("external_id", uuid_hex)
    assert isinstance(result, Normalized)
    assert result.value == sha(uuid_hex)


@pytest.mark.parametrize("field", HASHED_FIELDS)
def test_the_hash_of_the_empty_string_is_refused_even_pre_hashed(field: str) -> None:
    assert reason(norm(field, SHA256_OF_EMPTY.upper())) == "hash_of_empty"


@pytest.mark.parametrize("field", HASHED_FIELDS)
def test_whitespace_only_is_empty_not_hashed(field: str) -> None:
    assert reason(norm(field, " \u00a0\t\n")) == "empty"


def test_reasons_never_carry_the_raw_value() -> None:
    secret = "+1 555 0100 secret@example"
    for field in HASHED_FIELDS + UNHASHED_FIELDS:
        result = norm(field, secret)
        if isinstance(result, Omission):
            assert result.reason in OMISSION_REASONS
            assert secret not in repr(result)


# --- em -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a@b", "@b.co", "a@@b.co", "a@b.co x", "a@b .co"])
def test_invalid_emails(value: str) -> None:
    assert reason(norm("em", value)) == "invalid_email"


def test_an_email_that_starts_with_punctuation_is_still_an_email() -> None:
    assert normalized(norm("em", "!Joe@Example.com")) == "!joe@example.com"


# --- ph -----------------------------------------------------------------------------------------


def test_a_local_only_number_is_not_a_complete_phone() -> None:
    # Seven digits parse in the US but miss the area code: nobody can be matched on them.
    assert reason(norm("ph", "555-1212", "US")) == "invalid_phone"


def test_the_country_hint_beats_the_default_region() -> None:
    assert normalized(norm("ph", "020 7946 0018", "GB", default_phone_region="US")) == "442079460018"


def test_the_hint_may_be_a_country_name() -> None:
    assert normalized(norm("ph", "06 12 34 56 78", "France")) == "33612345678"


def test_a_region_phonenumbers_lacks_falls_back_to_the_default_region() -> None:
    assert normalized(norm("ph", "650 555 1212", "AQ", default_phone_region="US")) == "16505551212"


def test_no_region_keeps_digits_and_strips_leading_zeros() -> None:
    assert normalized(norm("ph", "0 44 20 7946 0018")) == "442079460018"
    assert reason(norm("ph", "1234567")) == "invalid_phone"
    assert reason(norm("ph", "1234567890123456")) == "invalid_phone"


def test_a_bad_international_number_is_omitted() -> None:
    assert reason(norm("ph", "+999 123")) == "invalid_phone"


def test_a_national_prefix_typed_after_the_country_code() -> None:
    assert normalized(norm("ph", "+31 (0)20 123 4567")) == "31201234567"
    assert normalized(norm("ph", "+31 020 123 4567")) == "31201234567"
    # Italy keeps the leading zero as part of the number.
    assert normalized(norm("ph", "+39 06 1234 5678")) == "390612345678"
    # Two zeros do not read back the same: placeholder-like input is omitted, not guessed.
    assert reason(norm("ph", "+31 00 20 123 4567")) == "invalid_phone"


def test_phones_shorter_than_8_digits_are_omitted_even_when_possible() -> None:
    # Read back without a region they would be refused, so they are refused on the way in too.
    assert reason(norm("ph", "+683 4002")) == "invalid_phone"
    assert reason(norm("ph", "+82 00000")) == "invalid_phone"


def test_unknown_default_phone_region_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="default_phone_region"):
        Normalizer(default_phone_region="Atlantis")


def test_default_phone_region_accepts_a_name() -> None:
    assert normalized(norm("ph", "030 901820", default_phone_region="Germany")) == "4930901820"


# --- fn ln ge ct --------------------------------------------------------------------------------


def test_names_keep_marks_of_non_latin_scripts() -> None:
    # Devanagari vowel signs are combining marks (Mn/Mc), not letters; dropping them changes the name.
    assert normalized(norm("fn", "प्रिया")) == "प्रिया"


def test_names_keep_digits_cities_do_not() -> None:
    assert normalized(norm("fn", "John 2")) == "john2"
    assert normalized(norm("ct", "Paris 8e")) == "parise"


def test_removing_punctuation_does_not_recompose_accents() -> None:
    # "e", "-", combining acute: NFC comes first (nothing to compose while the dash separates them),
    # then lowercase and filtering; composing again afterwards would hash differently from the Pixel.
    assert normalized(norm("ln", "e-\u0301")) == "e\u0301"


# Capital letters + a combining mark with no precomposed capital form, whose lowercase does have one:
# NFC leaves the capital decomposed, lowercasing then yields a sequence NFC would compose. The contract
# (NFC, trim, then the field rule's lowercase) keeps it decomposed, as Meta's Pixel (no NFC) does.
GREEK_CAPITAL_UPSILON_PSILI = "\u03a5\u0313"  # -> "\u03c5\u0313", composed it would be U+1F50
LATIN_CAPITAL_J_CARON = "J\u030c"  # -> "j\u030c", composed it would be U+01F0


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "fn",
            GREEK_CAPITAL_UPSILON_PSILI + "\u03c8\u03b7\u03bb\u03ae",
            "\u03c5\u0313\u03c8\u03b7\u03bb\u03ae",
        ),
        ("ln", LATIN_CAPITAL_J_CARON + "ames", "j\u030cames"),
        ("ct", GREEK_CAPITAL_UPSILON_PSILI + "\u03b4\u03c1\u03b1", "\u03c5\u0313\u03b4\u03c1\u03b1"),
        ("em", LATIN_CAPITAL_J_CARON + "@Example.com", "j\u030c@example.com"),
        ("zp", GREEK_CAPITAL_UPSILON_PSILI + "-12", "\u03c5\u031312"),
    ],
)
def test_hashed_text_is_lowercased_after_nfc_and_not_composed_again(
    field: str, value: str, expected: str
) -> None:
    assert unicodedata.is_normalized("NFC", value)  # the input is NFC already: no composition to do
    assert not unicodedata.is_normalized("NFC", expected)  # composing the output would change it
    result = norm(field, value)
    assert normalized(result) == expected
    assert isinstance(result, Normalized) and result.value == sha(expected)
    assert result.value != sha(unicodedata.normalize("NFC", expected))


@pytest.mark.parametrize(("value", "expected"), [("F", "f"), ("Woman", "f"), ("man", "m"), (" M. ", "m")])
def test_gender_words(value: str, expected: str) -> None:
    assert normalized(norm("ge", value)) == expected


def test_cities_without_letters_are_omitted() -> None:
    assert reason(norm("ct", "12345")) == "invalid_city"


# --- db -----------------------------------------------------------------------------------------

NOW_2026 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    "value",
    [
        "1997-2-16",
        "02/16/1997",
        "1997-02-16 08:30:00",
        "1997-02-16T23:59:59+02:00",
        19970216,
        dt.datetime(1997, 2, 16, 23, 0),
    ],
)
def test_date_of_birth_forms(value: object) -> None:
    assert normalized(norm("db", value)) == "19970216"


def test_mdy_is_us_order_and_a_day_first_date_is_not_guessed() -> None:
    assert reason(norm("db", "16/02/1997")) == "invalid_date"


def test_future_birth_dates_are_judged_against_the_injected_clock() -> None:
    normalizer = Normalizer(clock=lambda: NOW_2026)
    assert normalized(normalizer.normalize("db", "2026-03-01")) == "20260301"
    # Already 2 March in UTC+14 while it is noon on 1 March in UTC.
    assert normalized(normalizer.normalize("db", "2026-03-02")) == "20260302"
    assert reason(normalizer.normalize("db", "2026-03-03")) == "date_out_of_range"
    assert reason(normalizer.normalize("db", "1899-12-31")) == "date_out_of_range"


def test_an_invalid_iso_datetime_is_omitted() -> None:
    assert reason(norm("db", "1997-02-16Tnoon")) == "invalid_date"


# --- st zp country ------------------------------------------------------------------------------


def test_state_names_map_only_for_us_or_unknown_country() -> None:
    assert normalized(norm("st", "Texas")) == "tx"
    assert normalized(norm("st", "Texas", "United States")) == "tx"
    assert normalized(norm("st", "Texas", "MX")) == "texas"
    assert normalized(norm("st", "ZZ")) == "zz"
    assert reason(norm("st", "--")) == "invalid_state"


def test_us_state_table_agrees_with_pycountry() -> None:
    expected = {sub.code[3:].lower() for sub in pycountry.subdivisions if sub.country_code == "US"}
    assert set(US_STATE_CODES.values()) - {"aa", "ae", "ap"} == expected


def test_zip_truncation_only_for_us_or_unknown_country() -> None:
    assert normalized(norm("zp", "940351234", "CA")) == "940351234"
    assert normalized(norm("zp", "9403")) == "9403"
    assert reason(norm("zp", "--")) == "invalid_zip"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("United States of America", "us"),
        ("U.S.A.", "us"),
        ("deu", "de"),
        ("Côte d'Ivoire", "ci"),
        ("Cote d'Ivoire", "ci"),
        ("South Korea", "kr"),
        ("Great Britain", "gb"),
        ("Russia", "ru"),
    ],
)
def test_country_codes_and_names(value: str, code: str) -> None:
    assert normalized(norm("country", value)) == code


def test_country_code_maps_a_pre_hashed_country_back() -> None:
    assert country_code(sha("fr")) == "fr"
    assert country_code("nowhere") is None


# --- unhashed -----------------------------------------------------------------------------------


def test_unhashed_fields_are_trimmed_not_changed() -> None:
    result = norm("fbc", "  fb.1.1554763741205.AbCdEfGhIjKlMnOpQrSt  ")
    assert isinstance(result, Normalized)
    assert result.value == result.normalized == "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrSt"


def test_integer_ids_become_strings() -> None:
    assert normalized(norm("lead_id", 1234567890123)) == "1234567890123"


@pytest.mark.parametrize("value", ["203.0.113.7", "2001:db8::1", "fe80::1%eth0"])
def test_ip_addresses(value: str) -> None:
    assert normalized(norm("client_ip_address", f" {value} ")) == value


def test_invalid_ip_is_omitted() -> None:
    assert reason(norm("client_ip_address", "203.0.113.300")) == "invalid_ip"


def test_external_id_hashing_can_be_switched_off() -> None:
    result = Normalizer(hash_external_id=False).normalize("external_id", "  Cust-1 ")
    assert isinstance(result, Normalized)
    assert result.value == "Cust-1"


# --- user_data ----------------------------------------------------------------------------------


def test_user_data_for_a_typical_order() -> None:
    result = Normalizer().user_data(
        {
            "em": ["Joe@Example.com", " joe@example.com", "jo@example.org", None],
            "ph": "(650)555-1212",
            "st": "New York",
            "zp": "10001-0001",
            "country": "USA",
            "fn": "Joe",
            "ln": None,
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0",
            "ge": "unknown",
        }
    )
    assert result.user_data == {
        "em": [sha("joe@example.com"), sha("jo@example.org")],
        "ph": sha("16505551212"),
        "st": sha("ny"),
        "zp": sha("10001"),
        "country": sha("us"),
        "fn": sha("joe"),
        "client_ip_address": "203.0.113.7",
        "client_user_agent": "Mozilla/5.0",
    }
    assert result.omitted == (Omission("ge", "unmapped_gender"),)


def test_the_records_country_is_the_hint_for_phone_state_and_zip() -> None:
    result = Normalizer(default_phone_region="US").user_data(
        {"ph": "020 7946 0018", "st": "Georgia", "zp": "SW1A 1AA", "country": ["Atlantis", "GB"]}
    )
    assert result.user_data["ph"] == sha("442079460018")
    assert result.user_data["st"] == sha("georgia")
    assert result.user_data["zp"] == sha("sw1a1aa")
    assert result.omitted == (Omission("country", "unknown_country"),)


def test_a_pre_hashed_country_still_gives_the_hint() -> None:
    result = Normalizer().user_data({"country": sha("fr"), "ph": "06 12 34 56 78"})
    assert result.user_data == {"country": sha("fr"), "ph": sha("33612345678")}


def test_unhashed_keys_take_one_value() -> None:
    result = Normalizer().user_data({"fbp": ["fb.1.1.1", "fb.1.1.1", "fb.1.2.2"], "madid": ""})
    assert result.user_data == {"fbp": "fb.1.1.1"}
    assert result.omitted == (Omission("fbp", "multiple_values"), Omission("madid", "empty"))


def test_unknown_keys_are_reported() -> None:
    result = Normalizer().user_data({"email": "a@b.co"})
    assert result.user_data == {}
    assert result.omitted == (Omission("email", "unknown_field"),)


# --- cache --------------------------------------------------------------------------------------


def test_the_cache_is_bounded_and_serves_repeat_customers() -> None:
    normalizer = Normalizer(cache_size=2)
    for value in ("a@b.co", "c@d.co", "e@f.co", "e@f.co"):
        normalizer.normalize("em", value)
    hits, misses, size = normalizer.cache_stats()
    assert (hits, misses, size) == (1, 3, 2)


def test_the_cache_keeps_hints_apart() -> None:
    normalizer = Normalizer()
    assert normalized(normalizer.normalize("st", "Georgia")) == "ga"
    assert normalized(normalizer.normalize("st", "Georgia", country_hint="GE")) == "georgia"


def test_the_cache_can_be_disabled() -> None:
    normalizer = Normalizer(cache_size=0)
    assert normalized(normalizer.normalize("em", "A@B.co")) == "a@b.co"
    assert normalizer.cache_stats() == (0, 0, 0)


# --- a repeat customer's memo (Normalizer.memo) -------------------------------------------------------

MEMO_RUNS = (("external_id", "em"), ("fn", "ln", "ge", "ct", "st", "zp", "country"))


def _memo_and_user_data(
    normalizer: Normalizer, values: dict[str, object], per_event: dict[str, object]
) -> tuple[dict[str, object], tuple[Omission, ...], UserDataResult]:
    """user_data assembled from the memo (the way the generated mapping does) and from `user_data`."""
    memo = normalizer.memo(MEMO_RUNS)
    assert memo is not None
    memoized = memo(*(values.get(key) for run in MEMO_RUNS for key in run))
    out: dict[str, object] = dict(memoized.parts[0])
    omitted: list[Omission] = list(memoized.omitted[0])
    for key, value in per_event.items():  # between the two runs, like ph in the canonical mappings
        normalizer.adder(key)(value, memoized.hint, out, omitted)  # type: ignore[arg-type]
    out.update(memoized.parts[1])
    omitted += memoized.omitted[1]
    raw = {"external_id": values.get("external_id"), "em": values.get("em"), **per_event}
    raw.update({key: values.get(key) for key in MEMO_RUNS[1]})
    return out, tuple(omitted), normalizer.user_data(raw)


@pytest.mark.parametrize(
    ("values", "per_event"),
    [
        (
            {
                "external_id": "c-1",
                "em": " A@B.co ",
                "fn": "Zoë",
                "ge": "F",
                "st": "California",
                "country": "US",
            },
            {"ph": "(650) 555-1212", "db": dt.date(1990, 1, 2), "client_ip_address": "203.0.113.9"},
        ),
        (
            {"em": "bad", "st": "Georgia", "country": "Georgia", "zp": "0171"},
            {"ph": "0171 2345678", "fbp": " "},
        ),
        ({"external_id": 42, "ln": "!!"}, {"ph": "+44 20 7946 0958", "db": "1990-02-30", "fbc": "fb.1.2.x"}),
        ({}, {"client_user_agent": "Mozilla/5.0", "db": "02/03/1990"}),
    ],
)
def test_the_memo_gives_what_user_data_gives(values: dict[str, object], per_event: dict[str, object]) -> None:
    normalizer = Normalizer(default_phone_region="US", clock=lambda: NOW_2026)
    for _ in range(2):  # computed, then served from the memo
        out, omitted, expected = _memo_and_user_data(normalizer, values, per_event)
        assert out == expected.user_data and list(out) == list(expected.user_data)
        assert omitted == expected.omitted


def test_the_memo_is_bounded_and_keeps_value_types_apart() -> None:
    normalizer = Normalizer(memo_size=2)
    memo = normalizer.memo((("external_id", "em"),))
    assert memo is not None
    for em in ("a@b.co", "c@d.co", "e@f.co", "e@f.co"):
        memo("c-1", em)
    info = memo.cache_info()  # type: ignore[attr-defined]
    assert (info.hits, info.misses, info.currsize, info.maxsize) == (1, 3, 2, 2)
    assert memo(1, None).parts[0] == {"external_id": sha("1")}
    assert memo(True, None).omitted[0] == (Omission("external_id", "invalid_type"),)  # not 1's entry
    assert memo("1", None).parts[0] == {"external_id": sha("1")}
    assert memo.cache_info().currsize == 2  # type: ignore[attr-defined]


def test_the_memo_is_off_with_the_cache_and_takes_only_memo_fields() -> None:
    assert Normalizer(cache_size=0).memo(MEMO_RUNS) is None
    assert Normalizer(memo_size=0).memo(MEMO_RUNS) is None
    with pytest.raises(ValueError, match="MEMO_FIELDS"):
        Normalizer().memo((("em", "ph"),))  # a phone changes from order to order: never memoized
    assert "ph" not in MEMO_FIELDS and "db" not in MEMO_FIELDS


def test_birthdays_are_cached_per_day() -> None:
    clock = [NOW_2026]
    normalizer = Normalizer(clock=lambda: clock[0])
    tomorrow = (dt.datetime.fromtimestamp(NOW_2026, dt.UTC) + dt.timedelta(days=1, hours=14)).date()
    assert reason(normalizer.normalize("db", tomorrow)) == "date_out_of_range"
    clock[0] += 2 * 86_400  # two days later it is a birthday of the past, whatever was cached
    assert normalized(normalizer.normalize("db", tomorrow)) == tomorrow.strftime("%Y%m%d")


@pytest.mark.parametrize("cache_size", [65536, 0], ids=["cached", "uncached"])
def test_days_adder_equals_the_db_adder_of_the_date(cache_size: int) -> None:
    """A birthday left raw by the decoder (days since 1970-01-01) normalizes like the date it stands
    for, also after the day changes (a birthday that was in the future no longer is)."""
    now = [dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC).timestamp()]
    normalizer = Normalizer(cache_size=cache_size, clock=lambda: now[0])
    add_days, add_db = normalizer.days_adder(), normalizer.adder("db")
    epoch = dt.date(1970, 1, 1)
    today_days = (dt.date(2026, 12, 2) - epoch).days  # the earliest time zone's date
    days = [0, -25_567, 7_000, today_days - 1, today_days, today_days + 1, today_days + 2]
    for _ in range(2):  # the second time from what the first kept
        for _day in range(2):
            for n in [*days, "1990-05-17", dt.date(1990, 5, 17), "garbage"]:
                value = epoch + dt.timedelta(days=n) if isinstance(n, int) else n
                got: tuple[dict[str, str | list[str]], list[Omission]] = ({}, [])
                want: tuple[dict[str, str | list[str]], list[Omission]] = ({}, [])
                add_days(n, None, *got)
                add_db(value, None, *want)
                assert got == want, n
            now[0] += 86_400
        now[0] -= 2 * 86_400
