"""US states, DC, territories and military mail regions: name (letters only, lowercase) to USPS code.

Meta's `st` parameter wants the 2-letter ANSI/USPS code for US addresses. The names are keyed the
way `consumer.normalize` reduces a state before looking it up (lowercase, letters only), so
"District of Columbia", "district-of-columbia" and "DISTRICT OF COLUMBIA" all find `dc`.
"""

from __future__ import annotations

from types import MappingProxyType

US_STATE_CODES: MappingProxyType[str, str] = MappingProxyType(
    {
        "alabama": "al",
        "alaska": "ak",
        "arizona": "az",
        "arkansas": "ar",
        "california": "ca",
        "colorado": "co",
        "connecticut": "ct",
        "delaware": "de",
        "florida": "fl",
        "georgia": "ga",
        "hawaii": "hi",
        "idaho": "id",
        "illinois": "il",
        "indiana": "in",
        "iowa": "ia",
        "kansas": "ks",
        "kentucky": "ky",
        "louisiana": "la",
        "maine": "me",
        "maryland": "md",
        "massachusetts": "ma",
        "michigan": "mi",
        "minnesota": "mn",
        "mississippi": "ms",
        "missouri": "mo",
        "montana": "mt",
        "nebraska": "ne",
        "nevada": "nv",
        "newhampshire": "nh",
        "newjersey": "nj",
        "newmexico": "nm",
        "newyork": "ny",
        "northcarolina": "nc",
        "northdakota": "nd",
        "ohio": "oh",
        "oklahoma": "ok",
        "oregon": "or",
        "pennsylvania": "pa",
        "rhodeisland": "ri",
        "southcarolina": "sc",
        "southdakota": "sd",
        "tennessee": "tn",
        "texas": "tx",
        "utah": "ut",
        "vermont": "vt",
        "virginia": "va",
        "washington": "wa",
        "westvirginia": "wv",
        "wisconsin": "wi",
        "wyoming": "wy",
        "districtofcolumbia": "dc",
        "washingtondc": "dc",
        "americansamoa": "as",
        "guam": "gu",
        "northernmarianaislands": "mp",
        "puertorico": "pr",
        "virginislands": "vi",
        "usvirginislands": "vi",
        "unitedstatesvirginislands": "vi",
        "unitedstatesminoroutlyingislands": "um",
        "armedforcesamericas": "aa",
        "armedforceseurope": "ae",
        "armedforcespacific": "ap",
    }
)
"""Letters-only lowercase name -> lowercase 2-letter USPS code (50 states, DC, 6 territories, 3 APO/FPO)."""
