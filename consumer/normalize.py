"""Customer-information normalization and SHA-256 hashing for Meta's `user_data` (pure, no I/O).

The rules are the project's contract, ``../shared/docs/normalization.md``: every identifier is converted
to text, NFC-normalized and trimmed, then put through its field rule and hashed (SHA-256, lowercase hex
of the UTF-8 bytes). A value that fails its rule is never sent: it becomes an :class:`Omission` with a
machine-readable reason that metrics and the dead-letter topic carry. Reasons and exception messages
never contain the raw value.

Omission reasons (module constants, lower_snake):

==========================  ===================================================================
``empty``                   nothing left after NFC and trimming
``invalid_type``            a Python type the field cannot take (float, bool, bytes, a date
                            outside ``db`` ...)
``unknown_field``           the key is not a known ``user_data`` key
``md5_not_accepted``        a 32-hex value (an MD5) in a hashed field other than external_id
``hash_of_empty``           a pre-hashed value that is the SHA-256 of "" (an upstream bug)
``invalid_email``           ``em`` does not look like ``local@domain.tld``
``invalid_phone``           ``ph`` cannot be parsed, is not a complete possible number, has no
                            country code and no region to supply one, or is not 8-15 digits
``invalid_name``            ``fn``/``ln`` with no letter, mark or digit
``unmapped_gender``         ``ge`` is not f/female/woman/m/male/man
``invalid_date``            ``db`` is unparseable or impossible (1997-02-30)
``date_out_of_range``       ``db`` before 1900 or in the future
``invalid_city``            ``ct`` with no letter or mark
``invalid_state``           ``st`` with no letter or mark
``invalid_zip``             ``zp`` with nothing but spaces and dashes
``unknown_country``         ``country`` is not an ISO 3166-1 code or known English name
``invalid_ip``              ``client_ip_address`` is not an IPv4/IPv6 address
``multiple_values``         a second, different value for a key Meta takes as a single string
==========================  ===================================================================
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import phonenumbers
import pycountry
from phonenumbers import phonenumberutil as _pnu

from consumer.us_states import US_STATE_CODES

log = logging.getLogger(__name__)

HASHED_FIELDS: Final[tuple[str, ...]] = (
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
)
UNHASHED_FIELDS: Final[tuple[str, ...]] = (
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "lead_id",
    "fb_login_id",
    "anon_id",
    "madid",
    "page_id",
)
MESSAGING_FIELDS: Final[tuple[str, ...]] = (
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
    "whatsapp_business_account_id",
    "instagram_business_account_id",
)
"""Unhashed business-messaging identifiers (../shared/docs/capi-reference.md §3.1); passed through
like UNHASHED_FIELDS."""

EMPTY: Final = "empty"
INVALID_TYPE: Final = "invalid_type"
UNKNOWN_FIELD: Final = "unknown_field"
MD5_NOT_ACCEPTED: Final = "md5_not_accepted"
HASH_OF_EMPTY: Final = "hash_of_empty"
INVALID_EMAIL: Final = "invalid_email"
INVALID_PHONE: Final = "invalid_phone"
INVALID_NAME: Final = "invalid_name"
UNMAPPED_GENDER: Final = "unmapped_gender"
INVALID_DATE: Final = "invalid_date"
DATE_OUT_OF_RANGE: Final = "date_out_of_range"
INVALID_CITY: Final = "invalid_city"
INVALID_STATE: Final = "invalid_state"
INVALID_ZIP: Final = "invalid_zip"
UNKNOWN_COUNTRY: Final = "unknown_country"
INVALID_IP: Final = "invalid_ip"
MULTIPLE_VALUES: Final = "multiple_values"

OMISSION_REASONS: Final[frozenset[str]] = frozenset(
    {
        EMPTY,
        INVALID_TYPE,
        UNKNOWN_FIELD,
        MD5_NOT_ACCEPTED,
        HASH_OF_EMPTY,
        INVALID_EMAIL,
        INVALID_PHONE,
        INVALID_NAME,
        UNMAPPED_GENDER,
        INVALID_DATE,
        DATE_OUT_OF_RANGE,
        INVALID_CITY,
        INVALID_STATE,
        INVALID_ZIP,
        UNKNOWN_COUNTRY,
        INVALID_IP,
        MULTIPLE_VALUES,
    }
)

SHA256_OF_EMPTY: Final = hashlib.sha256(b"").hexdigest()

_HASHED: Final = frozenset(HASHED_FIELDS)
_PASSTHROUGH: Final = frozenset(UNHASHED_FIELDS) | frozenset(MESSAGING_FIELDS)
# Only these rules read the country; keying the cache on the hint for the others would split hits.
_HINTED: Final = frozenset({"ph", "st", "zp"})
# Dates of birth depend on "today": they have a cache of their own, keyed on today's date too.
# Unhashed pass-through IDs (fbp, fbc, user agent, ...) cost a trim: a cache hit is no cheaper, and as
# they are often unique per event they would only evict repeat customers' hashes (client_ip_address,
# which needs a parse, stays cached).
_PLAIN: Final = (frozenset(UNHASHED_FIELDS) | frozenset(MESSAGING_FIELDS)) - {"client_ip_address"}
_BIRTHDAY_TYPES: Final = frozenset({str, int, dt.date, dt.datetime})
"""The exact types `_normalize` hands to the birthday cache (not bool, not other subclasses)."""
_UNCACHED: Final = frozenset({"db"}) | _PLAIN

_HEX_RE: Final = re.compile(r"[0-9a-fA-F]+")
_EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_NOT_ASCII_ALNUM_RE: Final = re.compile(r"[^a-z0-9]+")
_NOT_ASCII_ALPHA_RE: Final = re.compile(r"[^a-z]+")
_ZIP_DROP_RE: Final = re.compile(r"[\s\-]+")
_DATE_YMD_RE: Final = re.compile(r"([0-9]{4})([-/])([0-9]{1,2})\2([0-9]{1,2})")
_DATE_COMPACT_RE: Final = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_DATE_MDY_RE: Final = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")

# E.164 allows at most 15 digits; fewer than 8 is a local number without its country code.
_MIN_PHONE_DIGITS: Final = 8
_MAX_PHONE_DIGITS: Final = 15
_GENDERS: Final = {"f": "f", "female": "f", "woman": "f", "m": "m", "male": "m", "man": "m"}
_MIN_BIRTH_YEAR: Final = 1900
# "Future" is judged in the earliest time zone on Earth, so a baby born today in Kiribati is valid.
_EARLIEST_UTC_OFFSET: Final = dt.timedelta(hours=14)

# English names pycountry does not know (it has ISO short and official names, few common ones).
# "UK" is the only one the contract requires; the rest are the usual names shops collect.
_COUNTRY_ALIASES: Final = {
    "uk": "gb",
    "greatbritain": "gb",
    "england": "gb",
    "scotland": "gb",
    "wales": "gb",
    "northernireland": "gb",
    "russia": "ru",
    "turkey": "tr",
    "macedonia": "mk",
    "capeverde": "cv",
    "ivorycoast": "ci",
    "swaziland": "sz",
    "burma": "mm",
    "vatican": "va",
    "holland": "nl",
    "brunei": "bn",
    "micronesia": "fm",
    "palestine": "ps",
    "drcongo": "cd",
}


@dataclass(frozen=True, slots=True)
class Normalized:
    """A value that goes into `user_data`.

    `normalized` is the string before hashing; `value` is what is sent: its SHA-256 (64 lowercase hex)
    for hashed fields, the trimmed text for unhashed ones.
    """

    field: str
    normalized: str
    value: str


@dataclass(frozen=True, slots=True)
class Omission:
    """A value left out of `user_data`; `reason` is one of OMISSION_REASONS and never contains PII."""

    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class UserDataResult:
    """`user_data` ready to send plus every value that was left out, in input order."""

    user_data: dict[str, str | list[str]]
    omitted: tuple[Omission, ...]


MEMO_FIELDS: Final[frozenset[str]] = frozenset(HASHED_FIELDS) - {"ph", "db"}
"""The identifiers a repeat customer's memo (`Normalizer.memo`) is keyed on: those that stay the same
from one order of a customer to the next. Phone numbers are left out (typed differently from order to
order, and random per order in the benchmark's workload, they would make every key new), and so are
dates of birth (their verdict depends on today's date); both go through the identifier cache."""


@dataclass(frozen=True, slots=True)
class Memoized:
    """What `Normalizer.user_data` makes of a customer's memoized identifiers (see `Normalizer.memo`):
    the country hint for the other identifiers, and for each run of consecutive memoized keys (in the
    mapping's key order) its part of user_data and its omissions. Shared between events: read-only."""

    hint: str | None
    parts: tuple[dict[str, str | list[str]], ...]
    omitted: tuple[tuple[Omission, ...], ...]


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 bytes of `text`, lowercase hex (64 characters)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _nfc(text: str) -> str:
    # ASCII is always NFC; skipping the call keeps the common case cheap.
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", text)


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX_RE.fullmatch(text) is not None


def _keep_categories(text: str, ascii_re: re.Pattern[str], keep: Callable[[str], bool]) -> str:
    """`text` (already lowercase) reduced to the characters `keep` accepts.

    Not composed again afterwards: the contract applies NFC before lowercasing and filtering, never
    after, and Meta's Pixel applies none (a lowercase letter can have a precomposed form its capital
    lacks, e.g. Greek capital upsilon + combining comma above, so composing after lowercasing would
    hash differently from the Pixel).
    """
    if text.isascii():
        return ascii_re.sub("", text)
    return "".join(ch for ch in text if keep(ch))


@functools.lru_cache(maxsize=4096)
def _is_letter_mark_digit(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] in "LM" or cat == "Nd"


@functools.lru_cache(maxsize=4096)
def _is_letter_mark(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LM"


def _letters_marks_digits(text: str) -> str:
    return _keep_categories(text, _NOT_ASCII_ALNUM_RE, _is_letter_mark_digit)


def _letters_marks(text: str) -> str:
    return _keep_categories(text, _NOT_ASCII_ALPHA_RE, _is_letter_mark)


def _country_key(text: str) -> str:
    """Lookup key for a country code or name: lowercase letters and marks only, composed (a key, not a
    hashed output: codes and names compare equal whichever way their accents were written)."""
    return _nfc(_letters_marks(_nfc(text).lower()))


def _strip_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch))


@functools.cache
def _country_index() -> dict[str, str]:
    """Every alpha-2, alpha-3 and English name pycountry knows (plus aliases) -> lowercase alpha-2."""
    index: dict[str, str] = {}
    countries = list(pycountry.countries)
    # Codes first so that no name can shadow a code.
    for attrs in (("alpha_2",), ("alpha_3",), ("name", "common_name", "official_name")):
        for country in countries:
            code = str(country.alpha_2).lower()
            for attr in attrs:
                label = getattr(country, attr, None)
                if isinstance(label, str) and label:
                    key = _country_key(label)
                    index.setdefault(key, code)
                    index.setdefault(_strip_accents(key), code)
    for alias, code in _COUNTRY_ALIASES.items():
        index.setdefault(alias, code)
    return index


@functools.cache
def _country_by_hash() -> dict[str, str]:
    """SHA-256 of each lowercase alpha-2 -> the code, so that a pre-hashed `country` still gives a hint."""
    return {sha256_hex(code): code for code in set(_country_index().values())}


@functools.lru_cache(maxsize=4096)
def country_code(text: str) -> str | None:
    """Lowercase ISO 3166-1 alpha-2 for a code, alpha-3 or English name (`UK` -> `gb`); None if unknown."""
    text = _nfc(text).strip()
    if _is_hex(text, 64):
        return _country_by_hash().get(text.lower())
    key = _country_key(text)
    if not key:
        return None
    index = _country_index()
    return index.get(key) or index.get(_strip_accents(key))


def _national_number(international: str) -> str | None:
    """National significant number of a `+...` number, or None when libphonenumber cannot parse it."""
    try:
        return phonenumbers.national_significant_number(phonenumbers.parse(international, None))
    except phonenumbers.NumberParseException:
        return None


# libphonenumber reads a number one character at a time and refuses inputs over 250 characters; for
# ASCII digits with the usual separators it reads exactly the digits (and a leading `+`), so handing it
# only those gives the same number (tests/unit/test_normalize_properties.py holds the two readings equal)
# for less: `_phone` took about 83 % of its time on the benchmark's numbers.
_PLAIN_PHONE_RE: Final = re.compile(r"\+?[0-9 ().\-]*")
_PLAIN_PHONE_MAX_LEN: Final = 250
_PHONE_SEPARATORS: Final = str.maketrans("", "", " ().-")


def _digits_for_parsing(text: str) -> str:
    """`text` without its separators when it is plain ASCII (see above), else unchanged."""
    if len(text) <= _PLAIN_PHONE_MAX_LEN and _PLAIN_PHONE_RE.fullmatch(text):
        return text.translate(_PHONE_SEPARATORS)
    return text


# `phonenumbers.parse` spends about half its time on text that plain digits are not: an RFC 3966
# context, the search for a number inside text, extensions, letters and non-ASCII digits. For an
# input of ASCII digits after an optional `+` (what `_digits_for_parsing` gives), `_parse_digits`
# runs only the steps of `parse` that such an input can take, with libphonenumber's own functions for
# each: private ones. constraints.txt (and so the image) pins the version, the tests hold the result
# equal to `parse` over every region's example numbers and generated ones, and on first use
# `_parse_steps_agree` checks every region's example number against `parse`, so that another version
# whose steps changed costs speed, not correctness. Whatever it cannot decide alone (fewer than three
# digits, any NumberParseException) goes to `parse`, so the output is the library's in every case.
_PLAIN_DIGITS_RE: Final = re.compile(r"\+?[0-9]{3,}")
_SHORT_LENGTHS: Final = frozenset(
    {
        phonenumbers.ValidationResult.TOO_SHORT,
        phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
        phonenumbers.ValidationResult.INVALID_LENGTH,
    }
)
_PARSE_STEPS_PRESENT: Final = all(
    hasattr(_pnu, name)
    for name in (
        "_maybe_extract_country_code",
        "_maybe_strip_national_prefix_carrier_code",
        "_test_number_length",
        "_set_italian_leading_zeros_for_phone_number",
        "_MIN_LENGTH_FOR_NSN",
        "_MAX_LENGTH_FOR_NSN",
    )
)
"""Whether the installed phonenumbers has the functions `_parse_digits` calls (else `parse` does all)."""


def _parse_digits(reading: str, region: str | None) -> phonenumbers.PhoneNumber:
    """`phonenumbers.parse(reading, region)` (`region` a supported region code or None)."""
    plain = _PLAIN_DIGITS_RE.fullmatch(reading) is not None and (region is not None or reading[0] == "+")
    if plain and _parse_steps_agree():
        return _parse_plain_digits(reading, region)
    return phonenumbers.parse(reading, region)


def _parse_fields(reading: str, region: str | None, parse: Callable[..., phonenumbers.PhoneNumber]) -> object:
    """What `parse` makes of `reading`, comparably: the number's fields, or the refusal's type."""
    try:
        number = parse(reading, region)
    except phonenumbers.NumberParseException as exc:
        return exc.error_type
    return (
        number.country_code,
        number.national_number,
        number.italian_leading_zero,
        number.number_of_leading_zeros,
        number.extension,
    )


@functools.cache
def _parse_steps_agree() -> bool:
    """Whether `_parse_plain_digits` gives what `parse` gives for every region's example number,
    written nationally (with and without the national prefix) and internationally. Checked once, so
    that with a phonenumbers other than the pinned one, whose steps no longer add up to its `parse`,
    every number goes to `parse` and only the speed is lost."""
    try:
        agree = _PARSE_STEPS_PRESENT and all(
            _parse_fields(reading, hint, _parse_plain_digits)
            == _parse_fields(reading, hint, phonenumbers.parse)
            for reading, hint in _example_readings()
        )
    except Exception:  # a changed signature or the like: the same verdict
        agree = False
    if not agree:
        log.warning(
            "phonenumbers %s: its parse steps differ from the pinned version's; phone numbers take parse",
            phonenumbers.__version__,
        )
    return agree


def _example_readings() -> Iterable[tuple[str, str | None]]:
    """Every region's example number as digits: national without and with the national prefix (read
    in its region), and international (read without a region)."""
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        example = phonenumbers.example_number(region)
        if example is None:
            continue
        national = phonenumbers.national_significant_number(example)
        written = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
        yield national, region
        yield phonenumbers.normalize_digits_only(written), region
        yield f"+{example.country_code}{national}", None


def _parse_plain_digits(reading: str, region: str | None) -> phonenumbers.PhoneNumber:
    """`_parse_digits` for a reading of plain digits, not checked (see `_parse_steps_agree`)."""
    number = phonenumbers.PhoneNumber()
    metadata = None if region is None else phonenumbers.PhoneMetadata.metadata_for_region(region, None)
    try:
        # `parse` passes None too when it has no region (its stubs say otherwise).
        country_code, national = _pnu._maybe_extract_country_code(
            reading,
            metadata,  # type: ignore[arg-type]
            False,
            number,
        )
    except phonenumbers.NumberParseException:
        return phonenumbers.parse(reading, region)  # it may retry, or raise what it raises
    if country_code:
        number_region = phonenumbers.region_code_for_country_code(country_code)
        if number_region != region:
            metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
                country_code, number_region
            )
    elif metadata is not None:
        # No country code in the number: it is national (a `+` always yields one, or raises).
        national = reading
        number.country_code = metadata.country_code
    if metadata is None or len(national) < _pnu._MIN_LENGTH_FOR_NSN:
        return phonenumbers.parse(reading, region)  # raises
    _carrier, stripped, _ = _pnu._maybe_strip_national_prefix_carrier_code(national, metadata)
    if _pnu._test_number_length(stripped, metadata) not in _SHORT_LENGTHS:
        national = stripped
    if not _pnu._MIN_LENGTH_FOR_NSN <= len(national) <= _pnu._MAX_LENGTH_FOR_NSN:
        return phonenumbers.parse(reading, region)  # raises
    _pnu._set_italian_leading_zeros_for_phone_number(national, number)
    number.national_number = int(national)
    return number


def _phone(text: str, region: str | None, *, shortcut: bool = True) -> str | None:
    """E.164 digits without `+`, or None. `region` is an uppercase phonenumbers region code.
    `shortcut=False` hands libphonenumber the text as it is (the tests compare the two)."""
    if text.startswith("+"):
        international: str | None = text
    elif text.startswith("00"):
        international = "+" + text[2:]
    else:
        international = None
    if international is None and region is None:
        digits = phonenumbers.normalize_digits_only(text).lstrip("0")
        return digits if _MIN_PHONE_DIGITS <= len(digits) <= _MAX_PHONE_DIGITS else None
    reading = international or text
    if shortcut:
        reading = _digits_for_parsing(reading)
    try:
        region = None if international else region
        number = _parse_digits(reading, region) if shortcut else phonenumbers.parse(reading, region)
    except phonenumbers.NumberParseException:
        return None
    # IS_POSSIBLE_LOCAL_ONLY (a number without its area code) cannot match anybody, so it is omitted.
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    # An all-zero national number passes the length check but is a placeholder, and libphonenumber
    # does not print back the zeros it read, so the output would not even be stable.
    if number.national_number == 0:
        return None
    national = phonenumbers.national_significant_number(number)
    # A national number that keeps a leading zero is right for Italy (+39 06...) but elsewhere is a
    # national prefix typed after the country code, which libphonenumber strips only on a second
    # reading; keeping only numbers that read back the same makes the output a fixed point.
    if national.startswith("0") and _national_number(f"+{number.country_code}{national}") != national:
        return None
    e164 = f"{number.country_code}{national}"
    # The same 8-15 digit bound as for numbers read without a region, so that an output read back
    # without a region is accepted unchanged; it costs only 7-digit numbers (Niue, Tokelau).
    return e164 if _MIN_PHONE_DIGITS <= len(e164) <= _MAX_PHONE_DIGITS else None


@dataclass(frozen=True, slots=True)
class _Fail:
    """A field rule's verdict that the value is omitted, kept apart from any text a rule can return."""

    reason: str


_FAILS: Final = {reason: _Fail(reason) for reason in OMISSION_REASONS}
_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
_DAYS_KEPT: Final = 50_000
"""Birthdays kept by day count (`days_adder`): more than a century of days."""


def _birth_date(value: str | dt.date, today: dt.date) -> str | _Fail:
    """`YYYYMMDD`, or why the date is omitted; dates after `today` are in the future."""
    if isinstance(value, dt.datetime):
        day: dt.date = value.date()
    elif isinstance(value, dt.date):
        day = value
    else:
        parsed = _parse_date(value)
        if parsed is None:
            return _FAILS[INVALID_DATE]
        day = parsed
    if day.year < _MIN_BIRTH_YEAR or day > today:
        return _FAILS[DATE_OUT_OF_RANGE]
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _parse_date(text: str) -> dt.date | None:
    if len(text) > 10 and text[10] in "Tt ":
        try:
            return dt.datetime.fromisoformat(text).date()
        except ValueError:
            return None
    try:
        if m := _DATE_YMD_RE.fullmatch(text):
            return dt.date(int(m[1]), int(m[3]), int(m[4]))
        if m := _DATE_COMPACT_RE.fullmatch(text):
            return dt.date(int(m[1]), int(m[2]), int(m[3]))
        if m := _DATE_MDY_RE.fullmatch(text):
            return dt.date(int(m[3]), int(m[1]), int(m[2]))
    except ValueError:
        return None
    return None


def _values(raw: object) -> Iterable[object]:
    if isinstance(raw, list | tuple):
        return [v for v in raw if v is not None]
    return () if raw is None else (raw,)


class Normalizer:
    """Turns raw customer identifiers into `user_data` values (see the module docstring for reasons).

    `default_phone_region` (ISO code or name) parses national phone numbers when the event carries no
    country. `hash_external_id=False` sends `external_id` trimmed but unhashed, for sites whose Pixel
    sends it raw. Results are kept in an LRU cache of `cache_size` entries (0 disables it) so that
    repeat customers cost one dict lookup (birthdays in one of `cache_size // 4` entries, keyed on the
    day too); `memo_size` bounds the memo of whole customers (`memo`). `clock` returns Unix seconds and
    decides which birth dates lie in the future.
    """

    __slots__ = (
        "_birthday",
        "_clock",
        "_compute",
        "_hash_external_id",
        "_memo_size",
        "_phone_default",
        "_today_at",
    )

    def __init__(
        self,
        *,
        default_phone_region: str | None = None,
        hash_external_id: bool = True,
        cache_size: int = 65536,
        memo_size: int = 8192,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _parse_steps_agree()  # once per process: at start-up rather than on the first phone number
        self._phone_default: str | None = None
        if default_phone_region is not None:
            code = country_code(default_phone_region)
            if code is None or code.upper() not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"default_phone_region {default_phone_region!r} is not a known phone region")
            self._phone_default = code.upper()
        self._hash_external_id = hash_external_id
        self._clock = clock
        self._today_at: tuple[int, dt.date] = (-1, dt.date.min)
        if cache_size < 0 or memo_size < 0:
            raise ValueError("cache_size and memo_size must be >= 0")
        # The memo serves what the identifier cache serves, so it is off whenever that is.
        self._memo_size = memo_size if cache_size else 0
        compute: Callable[[str, object, str | None], Normalized | Omission] = self._uncached
        self._compute = functools.lru_cache(maxsize=cache_size)(compute) if cache_size else compute
        birthday: Callable[[object, dt.date], Normalized | Omission] = self._birthday_uncached
        # Keyed on (value, today); typed: a date and the equal datetime are different keys. A quarter of
        # the entries: there are far fewer birthdays than e-mail addresses.
        self._birthday = (
            functools.lru_cache(maxsize=max(1, cache_size // 4), typed=True)(birthday)
            if cache_size
            else birthday
        )

    def normalize(
        self, field: str, value: object, *, country_hint: str | None = None
    ) -> Normalized | Omission:
        """Normalize one raw value of `field`; `country_hint` (code or name) steers ph, st and zp."""
        hint = country_code(country_hint) if country_hint is not None else None
        return self._normalize(field, value, hint)

    def cache_stats(self) -> tuple[int, int, int]:
        """(hits, misses, current size) of the result cache; all zero when it is disabled."""
        info = getattr(self._compute, "cache_info", None)
        if info is None:
            return (0, 0, 0)
        hits, misses, _maxsize, size = info()
        return (hits, misses, size)

    def user_data(self, raw: Mapping[str, object]) -> UserDataResult:
        """Normalize a mapping of user_data key -> raw value (or list of raw values); None is ignored.

        The normalized `country` of the same mapping is the country hint for ph, st and zp. Hashed keys
        come out as a string for one value and a de-duplicated list, in input order, for several.
        """
        hint = self._hint(raw.get("country"))
        out: dict[str, str | list[str]] = {}
        omitted: list[Omission] = []
        for field, raw_value in raw.items():
            self.add(field, raw_value, hint, out, omitted)
        return UserDataResult(out, tuple(omitted))

    def identifier(self, field: str, value: object, hint: str | None) -> Normalized | Omission:
        """One raw value of `field` as `user_data` normalizes it; `hint` is the lowercase ISO code that
        `user_data` derives from the same event's country (`Memoized.hint`), or None."""
        return self._normalize(field, value, hint)

    def memo(self, runs: tuple[tuple[str, ...], ...]) -> Callable[..., Memoized] | None:
        """A bounded memo of what `user_data` makes of a customer's identifiers, for one mapping.

        `runs` are the mapping's keys of MEMO_FIELDS (each taken from one scalar field), grouped in runs
        of keys that are consecutive in the mapping's key order. The returned function takes their raw
        values (None when absent), flattened in that order, as positional arguments and returns the
        `Memoized` result, computed on the first call and then kept in an LRU of `memo_size` entries:
        a repeat customer costs one lookup instead of one per identifier. Arguments are compared with
        their types (1 and True, "1" and 1 are different keys); values must be hashable. The other
        keys of the mapping (phone, birthday, browser IDs) are normalized per event with `identifier`
        and `Memoized.hint`. Without the country among the keys the hint is None. Returns None when
        caching is off (`cache_size=0` or `memo_size=0`).
        """
        if not self._memo_size:
            return None
        keys = tuple(key for run in runs for key in run)
        if not keys or len(set(keys)) != len(keys) or not set(keys) <= MEMO_FIELDS:
            raise ValueError("memo keys must be distinct keys of MEMO_FIELDS")

        def compute(*values: object) -> Memoized:
            raw = dict(zip(keys, values, strict=True))
            hint = self._hint(raw.get("country"))
            parts: list[dict[str, str | list[str]]] = []
            omissions: list[tuple[Omission, ...]] = []
            for run in runs:
                out: dict[str, str | list[str]] = {}
                omitted: list[Omission] = []
                for key in run:
                    self.add(key, raw[key], hint, out, omitted)
                parts.append(out)
                omissions.append(tuple(omitted))
            return Memoized(hint, tuple(parts), tuple(omissions))

        return functools.lru_cache(maxsize=self._memo_size, typed=True)(compute)

    def adder(
        self, field: str
    ) -> Callable[[object, str | None, dict[str, str | list[str]], list[Omission]], None]:
        """`add` for one field, `adder(field)(raw_value, hint, out, omitted)`, with the common case (one
        text value) done in one call: for the identifiers that change from event to event."""
        add = self.add
        if field in _PLAIN:

            def add_plain(
                raw_value: object, hint: str | None, out: dict[str, str | list[str]], omitted: list[Omission]
            ) -> None:
                if type(raw_value) is not str:
                    add(field, raw_value, hint, out, omitted)
                    return
                text = (raw_value if raw_value.isascii() else unicodedata.normalize("NFC", raw_value)).strip()
                if text:
                    out[field] = text
                else:
                    omitted.append(Omission(field, EMPTY))

            return add_plain
        if field in _HASHED or field in _PASSTHROUGH:
            compute = self._compute
            hinted = field in _HINTED
            birthday = field == "db"

            def add_one(
                raw_value: object, hint: str | None, out: dict[str, str | list[str]], omitted: list[Omission]
            ) -> None:
                kind = type(raw_value)
                if birthday and kind in _BIRTHDAY_TYPES:
                    # What `_normalize` does with one of these (a date from Avro, mostly).
                    result = self._birthday(raw_value, self._today())
                elif kind is str:
                    result = compute(field, raw_value, hint if hinted else None)
                else:
                    add(field, raw_value, hint, out, omitted)
                    return
                if isinstance(result, Omission):
                    omitted.append(result)
                else:
                    out[field] = result.value

            return add_one
        return functools.partial(add, field)

    def days_adder(
        self,
    ) -> Callable[[object, str | None, dict[str, str | list[str]], list[Omission]], None]:
        """`adder("db")` for a value that may be a date left raw by the decoder (an int: days since
        1970-01-01, Avro's `date`, in the range a date can hold): what `adder("db")` does with that
        date, without making it. Results are kept by day count for the current day."""
        add_db = self.adder("db")
        cached = hasattr(self._birthday, "cache_info")  # the birthday cache is on (cache_size > 0)
        by_days: dict[int, Normalized | Omission] = {}
        kept_for = dt.date.min

        def add_days(
            raw_value: object, hint: str | None, out: dict[str, str | list[str]], omitted: list[Omission]
        ) -> None:
            nonlocal kept_for
            if type(raw_value) is not int:
                add_db(raw_value, hint, out, omitted)
                return
            today = self._today()
            if kept_for != today:
                by_days.clear()
                kept_for = today
            result = by_days.get(raw_value)
            if result is None:
                result = self._birthday(dt.date.fromordinal(_EPOCH_ORDINAL + raw_value), today)
                if cached:
                    if len(by_days) >= _DAYS_KEPT:
                        by_days.clear()
                    by_days[raw_value] = result
            if isinstance(result, Omission):
                omitted.append(result)
            else:
                out["db"] = result.value

        return add_days

    def _hint(self, country: object) -> str | None:
        """The country hint for ph, st and zp: the first of the raw `country` values that normalizes."""
        for value in _values(country):
            result = self._normalize("country", value, None)
            if isinstance(result, Normalized):
                # country_code() also maps a pre-hashed country back to its code.
                return country_code(result.normalized)
        return None

    def add(
        self,
        field: str,
        raw_value: object,
        hint: str | None,
        out: dict[str, str | list[str]],
        omitted: list[Omission],
    ) -> None:
        """What `user_data` does with one key: its raw value(s) normalized into `out` (the key set once
        anything is left) and `omitted` (appended to); `hint` as for `identifier`."""
        if raw_value is None:
            return
        if type(raw_value) is str:
            # One text value (the common case): what the general path below does for a 1-element list.
            result = self._normalize(field, raw_value, hint)
            if isinstance(result, Omission):
                omitted.append(result)
            else:
                out[field] = result.value
            return
        sent: list[str] = []
        for value in _values(raw_value):
            result = self._normalize(field, value, hint)
            if isinstance(result, Omission):
                omitted.append(result)
            elif result.value not in sent:
                sent.append(result.value)
        if not sent:
            return
        if field in _HASHED:
            out[field] = sent[0] if len(sent) == 1 else sent
        else:
            out[field] = sent[0]
            omitted.extend(Omission(field, MULTIPLE_VALUES) for _ in sent[1:])

    def _normalize(self, field: str, value: object, hint: str | None) -> Normalized | Omission:
        if type(value) is str and field not in _UNCACHED:
            return self._compute(field, value, hint if field in _HINTED else None)
        # bool is an int and True == 1 would share 1's cache entry, so types are settled before the cache.
        if isinstance(value, bool) or not isinstance(value, str | int | dt.date):
            return Omission(field, INVALID_TYPE)
        if isinstance(value, dt.date) and field != "db":
            return Omission(field, INVALID_TYPE)
        if field == "db":
            return self._birthday(value, self._today())
        if field in _UNCACHED:
            return self._uncached(field, value, None)
        return self._compute(field, value, hint if field in _HINTED else None)

    def _birthday_uncached(self, value: object, today: dt.date) -> Normalized | Omission:
        """`db` judged against `today` (the key of its cache next to the value)."""
        return self._hashed("db", value, None, today)

    def _uncached(self, field: str, value: object, hint: str | None) -> Normalized | Omission:
        if field in _HASHED:
            return self._hashed(field, value, hint)
        if field in _PASSTHROUGH:
            return self._unhashed(field, value)
        return Omission(field, UNKNOWN_FIELD)

    def _unhashed(self, field: str, value: object) -> Normalized | Omission:
        text = _nfc(str(value)).strip()
        if not text:
            return Omission(field, EMPTY)
        if field == "client_ip_address":
            try:
                ipaddress.ip_address(text)
            except ValueError:
                return Omission(field, INVALID_IP)
        return Normalized(field, text, text)

    def _hashed(
        self, field: str, value: object, hint: str | None, today: dt.date | None = None
    ) -> Normalized | Omission:
        if isinstance(value, dt.date):
            # Only db takes dates (see _normalize); there is no text to trim or to find a hash in.
            return self._ruled(field, value, hint, today)
        text = _nfc(str(value)).strip()
        if not text:
            return Omission(field, EMPTY)
        if _is_hex(text, 64):
            digest = text.lower()
            if digest == SHA256_OF_EMPTY:
                return Omission(field, HASH_OF_EMPTY)
            return Normalized(field, digest, digest)
        if field == "external_id":
            # A 32-hex external_id is usually uuid4().hex, an ordinary ID, so it is hashed like any other.
            return Normalized(field, text, sha256_hex(text) if self._hash_external_id else text)
        if _is_hex(text, 32):
            return Omission(field, MD5_NOT_ACCEPTED)
        return self._ruled(field, text, hint, today)

    def _ruled(
        self, field: str, value: str | dt.date, hint: str | None, today: dt.date | None = None
    ) -> Normalized | Omission:
        normalized = self._apply_rule(field, value, hint, today)
        if isinstance(normalized, _Fail):
            return Omission(field, normalized.reason)
        # A rule can distil garbage into 32 hex characters; omitting it keeps the rules idempotent.
        if _is_hex(normalized, 32):
            return Omission(field, MD5_NOT_ACCEPTED)
        return Normalized(field, normalized, sha256_hex(normalized))

    def _today(self) -> dt.date:
        """Today's date in the earliest time zone (see _EARLIEST_UTC_OFFSET), worked out once per
        clock second: every record with a birthday asks."""
        second = int(self._clock())
        if self._today_at[0] != second:
            today = (dt.datetime.fromtimestamp(second, dt.UTC) + _EARLIEST_UTC_OFFSET).date()
            self._today_at = (second, today)
        return self._today_at[1]

    def _apply_rule(
        self, field: str, value: str | dt.date, hint: str | None, today: dt.date | None = None
    ) -> str | _Fail:
        """The field rule applied to trimmed NFC text (or a date for `db`, judged against `today`,
        default the clock's): normalized text or a failure."""
        if field == "db":
            return _birth_date(value, self._today() if today is None else today)
        text = str(value)
        if field == "em":
            email = text.lower()  # `text` is NFC already; lowercased after it, not composed again
            return email if _EMAIL_RE.fullmatch(email) else _FAILS[INVALID_EMAIL]
        if field == "ph":
            region = hint.upper() if hint is not None else None
            if region not in phonenumbers.SUPPORTED_REGIONS:
                region = self._phone_default
            phone = _phone(text, region)
            return phone if phone else _FAILS[INVALID_PHONE]
        if field in ("fn", "ln"):
            return _letters_marks_digits(text.lower()) or _FAILS[INVALID_NAME]
        if field == "ge":
            return _GENDERS.get(_letters_marks(text.lower()), _FAILS[UNMAPPED_GENDER])
        if field == "ct":
            return _letters_marks(text.lower()) or _FAILS[INVALID_CITY]
        if field == "st":
            state = _letters_marks(text.lower())
            if not state:
                return _FAILS[INVALID_STATE]
            return US_STATE_CODES.get(state, state) if hint in (None, "us") else state
        if field == "zp":
            zip_code = _ZIP_DROP_RE.sub("", text.lower())
            if not zip_code:
                return _FAILS[INVALID_ZIP]
            if hint in (None, "us") and zip_code.isascii() and zip_code.isdigit() and len(zip_code) in (5, 9):
                return zip_code[:5]
            return zip_code
        if field == "country":
            return country_code(text) or _FAILS[UNKNOWN_COUNTRY]
        raise AssertionError(f"no rule for hashed field {field}")
