"""ISO 3166 code checks: assigned alpha-2 country codes and the shape of subdivision codes."""

import re

# Officially assigned ISO 3166-1 alpha-2 codes, plus XK (user-assigned, used by KYC providers
# for Kosovo). A typo such as UK for GB would otherwise silently never match.
_ASSIGNED = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS XK YE YT ZA ZM ZW
"""
COUNTRY_CODES = frozenset(_ASSIGNED.split())

_SUBDIVISION = re.compile(r"([A-Z]{2})-[A-Z0-9]{1,3}")


def is_country_code(code: str) -> bool:
    """Whether `code` is an assigned ISO 3166-1 alpha-2 code (upper case)."""
    return code in COUNTRY_CODES


def is_subdivision_code(code: str) -> bool:
    """Whether `code` has the ISO 3166-2 shape `CC-XXX` with an assigned country part."""
    found = _SUBDIVISION.fullmatch(code)
    return found is not None and is_country_code(found.group(1))


def is_jurisdiction_code(code: str) -> bool:
    """Whether `code` is a country or subdivision code."""
    return is_country_code(code) or is_subdivision_code(code)


def country_of(code: str) -> str:
    """The country part of a country or subdivision code."""
    return code.split("-", 1)[0]
