"""The recognisers the scrubber runs inside Presidio's AnalyzerEngine.

Presidio's own pattern recognisers do cards (Luhn), IBANs (mod 97), e-mail addresses and
national identifiers (with their check digits where Presidio validates them); a few
identifiers Presidio has no recogniser for (French NIR, Dutch BSN, Chinese resident id,
Brazilian CPF) are added the same way, as ``PatternRecognizer``s with a checksum.
Phones go through ``phonenumbers`` (every region's metadata), names through the trained
model (``scrub_ner``) and the hand-written rules (``scrub_rules``).  Nothing here loads a
model from the network: the engine runs on Presidio's ``NoOpNlpEngine`` (no spaCy
pipeline) and ``tldextract`` is pinned to its bundled suffix-list snapshot.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

import phonenumbers
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    EsNieRecognizer,
    EsNifRecognizer,
    FiPersonalIdentityCodeRecognizer,
    IbanRecognizer,
    InAadhaarRecognizer,
    ItFiscalCodeRecognizer,
    KrRrnRecognizer,
    PlPeselRecognizer,
    SePersonnummerRecognizer,
    TrNationalIdRecognizer,
    UkNinoRecognizer,
    UsSsnRecognizer,
)

from lab_hardware.modelops import scrub_ner, scrub_rules

#: Presidio entity -> scrubber kind (placeholder ``<kind>``).
NATIONAL_IDS = (
    "US_SSN",
    "UK_NINO",
    "IT_FISCAL_CODE",
    "PL_PESEL",
    "ES_NIF",
    "ES_NIE",
    "FI_PERSONAL_IDENTITY_CODE",
    "SE_PERSONNUMMER",
    "KR_RRN",
    "IN_AADHAAR",
    "TR_NATIONAL_ID",
    "FR_NIR",
    "NL_BSN",
    "CN_RIC",
    "BR_CPF",
)
ENTITY_KIND = {
    "PERSON": "name",
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card",
    "IBAN_CODE": "iban",
    **{e: "id" for e in NATIONAL_IDS},
}
#: Entities that need digits (a cheap pre-filter skips them in text with fewer than 5).
NUMERIC = ("PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", *NATIONAL_IDS)
#: Minimum score a result needs; weak patterns (Presidio's "very weak" SSN forms) pass only
#: with one of their recogniser's context words in the utterance.
THRESHOLD = 0.4

_TLD = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # bundled snapshot, never the network


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recogniser with the suffix check on tldextract's bundled list
    (the default extractor fetches the public suffix list over the network)."""

    def validate_result(self, pattern_text: str) -> Optional[bool]:
        return _TLD(pattern_text.rsplit("@", 1)[-1]).suffix != ""


# ---- identifiers Presidio has no recogniser for --------------------------------------------
def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


class FrNirRecognizer(PatternRecognizer):
    """French social-security number (NIR, 13 digits + 2-digit key = 97 - n mod 97)."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="FR_NIR",
            patterns=[
                Pattern(
                    "NIR",
                    r"\b[12][ .]?\d{2}[ .]?(?:0[1-9]|1[0-2]|[2-9]\d)[ .]?(?:\d{2}|2[ab])[ .]?\d{3}[ .]?\d{3}[ .]?\d{2}\b",
                    0.3,
                )
            ],
            context=["sécurité", "securite", "social", "insee", "nir"],
        )

    def validate_result(self, pattern_text: str) -> Optional[bool]:
        s = re.sub(r"[ .]", "", pattern_text).upper().replace("2A", "19").replace("2B", "18")
        return len(s) == 15 and s.isdigit() and 97 - int(s[:13]) % 97 == int(s[13:])


class NlBsnRecognizer(PatternRecognizer):
    """Dutch citizen service number (BSN, 9 digits, the "11-proof")."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="NL_BSN",
            patterns=[Pattern("BSN", r"\b\d{4}[ .]?\d{2}[ .]?\d{3}\b", 0.3)],
            context=["bsn", "burgerservicenummer", "sofinummer", "citizen"],
        )

    def validate_result(self, pattern_text: str) -> Optional[bool]:
        d = _digits(pattern_text)
        if len(d) != 9 or d == "0" * 9:
            return False
        return (sum(int(c) * w for c, w in zip(d[:8], range(9, 1, -1))) - int(d[8])) % 11 == 0


class CnRicRecognizer(PatternRecognizer):
    """Chinese resident identity card number (18 characters, ISO 7064 MOD 11-2 check)."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CN_RIC",
            patterns=[
                Pattern(
                    "RIC", r"\b[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]\b", 0.5
                )
            ],
            context=["身份证", "identity", "id"],
        )

    def validate_result(self, pattern_text: str) -> Optional[bool]:
        w = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
        check = "10X98765432"[sum(int(c) * k for c, k in zip(pattern_text[:17], w)) % 11]
        return check == pattern_text[17].upper()


class BrCpfRecognizer(PatternRecognizer):
    """Brazilian CPF (11 digits, two check digits)."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="BR_CPF",
            patterns=[Pattern("CPF", r"\b\d{3}\.?\d{3}\.?\d{3}-?\d{2}\b", 0.3)],
            context=["cpf"],
        )

    def validate_result(self, pattern_text: str) -> Optional[bool]:
        d = [int(c) for c in _digits(pattern_text)]
        if len(d) != 11 or len(set(d)) == 1:
            return False
        for n in (9, 10):
            s = sum(d[i] * (n + 1 - i) for i in range(n)) * 10 % 11 % 10
            if s != d[n]:
                return False
        return True


# ---- phones ---------------------------------------------------------------------------------
#: A run that could be a phone number: digits with the separators people write, an optional
#: "+" or "00" country prefix, "(0)", and an extension.
_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+.,:/>-])(?:\+|00)?(?:\(\+?\d{1,4}\)[ .-]?)?\d(?:[ .\-/]?\(?\d+\)?)*\d"
    r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,6})?(?![\w%]|[.,]\d|:\d)",
    re.I,
)
_EXTENSION = re.compile(r"\s*(?:x|ext\.?|extension)\s*\d{1,6}$", re.I)
_DATE_LIKE = re.compile(
    r"^(?:(?:[012]?\d|3[01])([./-])(?:[012]?\d|3[01])\1(?:\d{2}|\d{4})"
    r"|\d{4}([./-])(?:0?\d|1[0-2])\2(?:[012]?\d|3[01]))$"
)
_TIME_LIKE = re.compile(r"^\d{1,2}[:.]\d{2}$")
_YEARS_LIKE = re.compile(r"^(?:1[89]|20)\d{2}\s?[-/]\s?(?:(?:1[89]|20)\d{2}|\d{2})$")
#: Regions tried first for a number written without "+" (the lab's locales), then all the rest.
_FIRST_REGIONS = (
    "US",
    "GB",
    "DE",
    "FR",
    "ES",
    "IT",
    "PL",
    "NL",
    "SE",
    "RU",
    "UA",
    "CN",
    "JP",
    "KR",
    "BR",
    "TR",
    "IN",
    "NG",
    "GH",
    "KE",
    "ZA",
    "AU",
    "CA",
    "MX",
    "IE",
    "PT",
    "CZ",
    "HU",
    "RO",
    "GR",
    "FI",
    "DK",
    "NO",
    "IL",
    "VN",
    "PH",
    "ID",
)
_REGIONS = _FIRST_REGIONS + tuple(sorted(phonenumbers.SUPPORTED_REGIONS - set(_FIRST_REGIONS)))
_PHONE_CONTEXT = re.compile(
    r"\b(?:call|phone|ring|dial|text|txt|sms|whatsapp|number|no|tel|mobile|cell|fax|reach|contact|landline)\b\W*"
    r"(?:\w+\W+){0,3}$",
    re.I,
)


@lru_cache(maxsize=4096)
def _possible_somewhere(digits: str) -> bool:
    """Whether ``digits`` (written without "+") is a possible number in some region."""
    for region in _REGIONS:
        try:
            if phonenumbers.is_possible_number(phonenumbers.parse(digits, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


def phone_spans(text: str) -> list[tuple[int, int]]:
    """Phone numbers in ``text``: "+" numbers that phonenumbers parses and finds possible for
    their country, and national numbers (no "+") written like a phone number -- a trunk
    "0"/"8", brackets, a grouping separator, or a phone word before them -- that are a
    possible number in at least one region.  Dates, times, decimals, versions and
    bare counts are not phones."""
    out = []
    for m in _PHONE_CANDIDATE.finditer(text):
        cand = m.group()
        core = _EXTENSION.sub("", cand)
        digits = _digits(core)
        if not 7 <= len(digits) <= 15 or _DATE_LIKE.match(core) or _TIME_LIKE.match(core) or _YEARS_LIKE.match(core):
            continue
        if core.startswith(("+", "00")):
            try:
                num = phonenumbers.parse("+" + digits[2:] if core.startswith("00") else core, None)
                if phonenumbers.is_possible_number(num):
                    out.append((m.start(), m.end()))
                    continue
            except phonenumbers.NumberParseException:
                pass
            if core.startswith("+"):
                continue  # "00..." may still be a national number with its trunk prefix
        grouped = bool(re.search(r"\d[ .\-/()]+\d", core)) or core.startswith("(")
        trunk = core.startswith(("0", "8 (", "8(")) and len(digits) >= 9
        context = bool(_PHONE_CONTEXT.search(text, 0, m.start()))
        if "." in core and not (
            re.fullmatch(r"\(?\d{2,4}\)?(?:\.\d{2,4}){2,4}", core)
            or context
            and re.fullmatch(r"\d{2,4}(?:\.\d{2,4}){1,4}", core)
        ):
            continue  # 1.2.3, 3.14159, 192.168.1.1
        if not (
            grouped and len(digits) >= 9 or trunk or context or (grouped and core.count("-") >= 1 and len(digits) >= 7)
        ):
            continue
        if _possible_somewhere(digits):
            out.append((m.start(), m.end()))
    return out


class PhonenumbersRecognizer(LocalRecognizer):
    """Phone numbers of every region through ``phonenumbers`` (see ``phone_spans``).

    Presidio's own ``PhoneRecognizer`` runs ``PhoneNumberMatcher`` once per region
    (hundreds of microseconds each): for every region that is far over a device's budget,
    so candidates are found once and checked against each region's metadata instead."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PHONE_NUMBER"], name="PhonenumbersRecognizer")

    def load(self) -> None:  # noqa: D102 - nothing to load
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        return [RecognizerResult("PHONE_NUMBER", s, e, 1.0) for s, e in phone_spans(text)]


# ---- names and the hand-written rules -------------------------------------------------------
class NameModelRecognizer(LocalRecognizer):
    """Person names from the trained token classifier (``scrub_ner``)."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="NameModelRecognizer")

    def load(self) -> None:  # noqa: D102
        scrub_ner.model()

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        return [RecognizerResult("PERSON", s, e, 0.85) for s, e in scrub_ner.model().spans(text, _ambiguous())]


@lru_cache(maxsize=1)
def _ambiguous() -> frozenset[str]:
    """Names the hand-written gazetteer marks as also ordinary words (April, Grace, Rice ...)."""
    return frozenset(scrub_rules.gazetteer()[1])


class RulesRecognizer(LocalRecognizer):
    """The hand-written rules (``scrub_rules``): ambiguous names decided by context, North-American
    and "+" phone forms, spoken e-mail addresses ("anna dot smith at example dot com")."""

    _ENTITY = {"name": "PERSON", "email": "EMAIL_ADDRESS", "phone": "PHONE_NUMBER"}

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER"], name="RulesRecognizer")

    def load(self) -> None:  # noqa: D102
        scrub_rules.gazetteer()

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        return [RecognizerResult(self._ENTITY[k], s, e, 0.9) for k, s, e in scrub_rules.find(text)]


def _cards() -> CreditCardRecognizer:
    """Presidio's card recogniser (its validation is the Luhn check) with two more patterns:
    Mastercard's 2-series/Mir, and 13-19 digits of the card networks in any grouping
    ("4092 1234 3350 3", a 19-digit Visa)."""
    patterns = CreditCardRecognizer.PATTERNS + [
        Pattern("Mastercard 2-series, Mir", r"\b(?:2[2-7]\d{2})[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b", 0.3),
        Pattern("Any grouping", r"\b[2-6]\d{3}(?:[- ]?\d){9,15}\b", 0.3),
    ]
    return CreditCardRecognizer(patterns=patterns)


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class CaseFreeIbanRecognizer(IbanRecognizer):
    """Presidio's IBAN recogniser on an upper-cased copy (a transcript writes "de89 3704 ...");
    ASCII-only upper-casing keeps every offset."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None, regex_flags=None):
        return super().analyze(text.translate(_ASCII_UPPER), entities, nlp_artifacts, regex_flags)


@lru_cache(maxsize=4)
def analyzer(email: bool = True, numeric: bool = True) -> AnalyzerEngine:
    """An AnalyzerEngine with the recognisers an utterance can need (built once per process).

    The pre-filter picks the engine: names always; e-mail when the text has an "@"; phones,
    cards, IBANs and ids when it has five digits or more.  Separate engines rather than
    ``analyze(entities=...)``: the registry's per-call filtering costs more than the
    recognisers themselves on a short utterance."""
    recognizers: list[EntityRecognizer] = [RulesRecognizer(), NameModelRecognizer()]
    if email:
        recognizers.append(OfflineEmailRecognizer())
    if numeric:
        # Country recognisers default to their country's language; utterances are analysed as "en".
        recognizers += [PhonenumbersRecognizer(), _cards(), CaseFreeIbanRecognizer()]
        recognizers += [
            cls(supported_language="en")
            for cls in (
                UsSsnRecognizer,
                UkNinoRecognizer,
                ItFiscalCodeRecognizer,
                PlPeselRecognizer,
                EsNifRecognizer,
                EsNieRecognizer,
                FiPersonalIdentityCodeRecognizer,
                SePersonnummerRecognizer,
                KrRrnRecognizer,
                InAadhaarRecognizer,
                TrNationalIdRecognizer,
            )
        ]
        recognizers += [FrNirRecognizer(), NlBsnRecognizer(), CnRicRecognizer(), BrCpfRecognizer()]
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    engine = AnalyzerEngine(
        registry=registry,
        nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]),
        supported_languages=["en"],
        default_score_threshold=0.0,
    )
    for rec in recognizers:
        rec.load()
        rec.is_loaded = True
    return engine


@lru_cache(maxsize=1)
def context_words() -> dict[str, tuple[str, ...]]:
    """Recogniser name -> its context words (lower case), for weak pattern results."""
    return {r.name: tuple(w.lower() for w in (r.context or ())) for r in analyzer(True, True).registry.recognizers}
