"""Place names as Meta wants them: US states as their two-letter codes, countries as ISO 3166-1
alpha-2 codes, each reachable by code and by name (letters only, lowercase).

The tables are built once, at import, from pycountry's ISO 3166 data (every country by its
codes, name, official name and common name; every US state, district and outlying area from
ISO 3166-2), plus the everyday names ISO does not list (USA, UK, Russia, South Korea...).
Lookups are then one dict access per distinct cell, as before.
"""

from __future__ import annotations

import unicodedata

import pycountry


def letters(raw: str) -> str:
    """Lowercase letters of any script; punctuation, digits and spaces dropped."""
    s = raw.lower()
    if s.isascii():
        return s if s.isalpha() else s.translate(_DROP_NON_ALPHA)
    # NFC so composed and decomposed "é" hash the same. Combining marks are kept because
    # scripts like Devanagari write vowels with them (isalpha() is False for those).
    s = unicodedata.normalize("NFC", s)
    return "".join(c for c in s if c.isalpha() or unicodedata.category(c)[0] == "M")


_DROP_NON_ALPHA = {c: None for c in range(128) if not chr(c).isalpha()}


def _forms(name: str) -> set[str]:
    """A name's lookup keys: its letters, and the same without accents ("Côte d'Ivoire"
    is as often written "Cote d'Ivoire")."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return {letters(name), letters(folded)} - {""}


# Everyday names ISO 3166 does not list; letters only, lowercase.
COUNTRY_ALIASES: dict[str, str] = {
    "usa": "us", "america": "us", "unitedstatesofamerica": "us", "uk": "gb",
    "greatbritain": "gb", "britain": "gb", "england": "gb", "scotland": "gb", "wales": "gb",
    "northernireland": "gb", "holland": "nl", "thenetherlands": "nl", "uae": "ae",
    "russia": "ru", "southkorea": "kr", "korea": "kr", "republicofkorea": "kr",
    "northkorea": "kp", "macau": "mo", "micronesia": "fm", "turkey": "tr", "turkiye": "tr",
    "ivorycoast": "ci", "capeverde": "cv", "burma": "mm", "swaziland": "sz", "easttimor": "tl",
    "vatican": "va", "vaticancity": "va", "holysee": "va", "palestine": "ps", "brunei": "bn",
    "czechrepublic": "cz", "drc": "cd", "drcongo": "cd", "democraticrepublicofthecongo": "cd",
    "congobrazzaville": "cg", "republicofthecongo": "cg", "congokinshasa": "cd",
    "usvirginislands": "vi", "britishvirginislands": "vg", "saintmartin": "mf",
    "sintmaarten": "sx", "falklandislands": "fk", "stlucia": "lc", "stkittsandnevis": "kn",
    "stvincentandthegrenadines": "vc", "trinidad": "tt", "bosnia": "ba", "macedonia": "mk",
}  # fmt: skip


def _countries() -> dict[str, str]:
    codes: dict[str, str] = {}
    names: dict[str, str] = {}
    shorts: dict[str, set[str]] = {}
    for country in pycountry.countries:
        a2 = country.alpha_2.lower()
        codes[a2] = a2
        codes[country.alpha_3.lower()] = a2
        full = [country.name]
        full += [
            getattr(country, n) for n in ("official_name", "common_name") if hasattr(country, n)
        ]
        if ", " in country.name:
            # "Iran, Islamic Republic of": also "Islamic Republic of Iran", and "Iran" alone
            # when no other country's name starts so ("Korea, ..." and "Congo, ..." do).
            before, after = country.name.split(", ", 1)
            full.append(f"{after} {before}")
            shorts.setdefault(letters(before), set()).add(a2)
        for name in full:
            for form in _forms(name):
                names.setdefault(form, a2)
    for short, which in shorts.items():
        if len(which) == 1:
            names.setdefault(short, *which)
    # Codes win over names, and the aliases over both: they are the names people mean.
    return {**names, **codes, **COUNTRY_ALIASES}


COUNTRIES: dict[str, str] = _countries()


# US names ISO 3166-2 does not list; letters only, lowercase.
STATE_ALIASES: dict[str, str] = {
    "washingtondc": "dc", "usvirginislands": "vi", "virginislands": "vi",
    "virginislandsus": "vi", "unitedstatesvirginislands": "vi",
}  # fmt: skip


def _us_states() -> dict[str, str]:
    table: dict[str, str] = {}
    # pycountry's get() has no annotations; it returns the country's subdivisions.
    subdivisions = pycountry.subdivisions.get(country_code="US")  # type: ignore[no-untyped-call]
    for sub in subdivisions:
        code = sub.code.split("-")[1].lower()
        table[code] = code
        for form in _forms(sub.name):
            table.setdefault(form, code)
    return {**table, **STATE_ALIASES}


# Meta's rule names only US states as codes; a state elsewhere (a Canadian province too) is
# its name's letters, so ISO 3166-2 codes of other countries are not applied.
US_STATES: dict[str, str] = _us_states()
