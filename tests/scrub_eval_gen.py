"""Generate the scrubber's held-out evaluation set, ``tests/scrub_eval.jsonl``.

    python tests/scrub_eval_gen.py [--out tests/scrub_eval.jsonl] [--check]

Several thousand voice-assistant utterances from templates of this file only (the name
model's training templates live in ``lab_hardware/modelops/scrub_ner_train.py``, with
another seed), filled with fake PII from Faker in many locales: person names (accented,
Cyrillic, Greek, CJK, Hangul, Arabic, Polish, West African ...; a title before a surname
that is also a word; curly apostrophes), e-mail addresses (plain and written out:
``[at]``, ``(at)``, full-width ``＠``, zero-width spaces), phone numbers in each locale's
own national formats, card numbers, IBANs and national identifiers of 14 countries;
plus near-misses with no PII at all (numbers that are not phones, words that are also
names).  Each record holds the exact character spans of its PII, so recall is measured
per span and per type, and words wrongly removed over every word outside the spans.
Nothing here is used to build or tune the scrubber.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import random
import sys
import types
from pathlib import Path

SEED = 20261202
OUT = Path(__file__).with_name("scrub_eval.jsonl")
COUNTS = {
    "name": 1500,
    "email": 600,
    "phone": 700,
    "card": 300,
    "iban": 300,
    "id": 600,
    "mixed": 300,
    "near-miss": 1200,
}

NAME_LOCALES = (
    "en_US",
    "en_GB",
    "en_NG",
    "yo_NG",
    "ig_NG",
    "ha_NG",
    "tw_GH",
    "fr_FR",
    "fr_CH",
    "de_DE",
    "de_CH",
    "es_ES",
    "es_CO",
    "es_CL",
    "pt_BR",
    "it_IT",
    "pl_PL",
    "cs_CZ",
    "sk_SK",
    "hu_HU",
    "ro_RO",
    "hr_HR",
    "ru_RU",
    "uk_UA",
    "bg_BG",
    "el_GR",
    "tr_TR",
    "sv_SE",
    "da_DK",
    "fi_FI",
    "nl_NL",
    "lt_LT",
    "zh_CN",
    "zh_TW",
    "ja_JP",
    "ko_KR",
    "vi_VN",
    "hi_IN",
    "en_IN",
    "ar_AA",
    "he_IL",
    "fa_IR",
    "id_ID",
    "fil_PH",
    "en_KE",
    "zu_ZA",
    "ga_IE",
)
PHONE_LOCALES = (
    "en_US",
    "en_GB",
    "de_DE",
    "fr_FR",
    "es_ES",
    "it_IT",
    "pl_PL",
    "nl_NL",
    "sv_SE",
    "da_DK",
    "ru_RU",
    "uk_UA",
    "pt_BR",
    "ja_JP",
    "ko_KR",
    "zh_CN",
    "en_IN",
    "tr_TR",
    "cs_CZ",
    "hu_HU",
    "en_AU",
    "fi_FI",
    "no_NO",
    "ro_RO",
    "el_GR",
    "he_IL",
    "en_NG",
    "es_MX",
    "id_ID",
    "en_CA",
)
IBAN_LOCALES = (
    "de_DE",
    "fr_FR",
    "es_ES",
    "it_IT",
    "nl_NL",
    "pl_PL",
    "en_GB",
    "pt_PT",
    "fi_FI",
    "da_DK",
    "no_NO",
    "cs_CZ",
    "ro_RO",
    "el_GR",
    "tr_TR",
    "de_AT",
    "nl_BE",
    "sv_SE",
    "hu_HU",
    "en_IE",
)
#: (locale, Faker method) of each national identifier.
ID_SOURCES = (
    ("en_US", "ssn"),
    ("it_IT", "ssn"),
    ("pl_PL", "pesel"),
    ("es_ES", "nif"),
    ("fi_FI", "ssn"),
    ("sv_SE", "ssn"),
    ("ko_KR", "ssn"),
    ("fr_FR", "ssn"),
    ("nl_NL", "ssn"),
    ("zh_CN", "ssn"),
    ("pt_BR", "cpf"),
    ("en_IN", "aadhaar_id"),
    ("tr_TR", "ssn"),
    ("en_GB", "nino"),
)
CARD_TYPES = ("visa16", "visa13", "mastercard", "amex", "discover", "jcb16", "diners", "visa19")

# ---- templates (evaluation only) -------------------------------------------------------------
NAME_T = (
    "could you give {P} a ring",
    "i need to phone {P} right away",
    "get {P} on the line",
    "start a video chat with {P}",
    "drop {P} a text saying i'm outside",
    "let {P} know i'm outside",
    "send {P} the grocery list",
    "what time does {P} land",
    "has {P} replied yet",
    "read me the last message from {P}",
    "show me photos of {P}",
    "{P} wants pizza tonight",
    "{P} will pick up the kids",
    "i'm meeting {P} for coffee at ten",
    "add lunch with {P} to my calendar",
    "put {P}'s birthday on the calendar",
    "what's {P}'s address",
    "play {P}'s favourite album",
    "remind {P} about the dentist",
    "is {P} still at the office",
    "tell {P} that dinner's ready",
    "ask {P} whether she wants tea",
    "{P} is allergic to nuts",
    "the parcel is for {P}",
    "forward the receipt to {P}",
    "hi, this is {P}",
    "hello {P}, the timer is done",
    "{P}, dinner is ready",
    "my neighbour {P} is away",
    "who is {P}",
    "please thank {P} for the flowers",
    "book a cab for {P}",
    "set a reminder to congratulate {P}",
    "{P} and {P} are coming at six",
    "call {P} or {P}",
    "i owe {P} twenty dollars",
    "invite {P}, {P} and {P} to the barbecue",
    "{P} rang twice",
    "make an appointment with {T}",
    "is {T} in today",
    "leave a message for {T}",
    "text {T} my results",
    "{T} said to rest",
    "call {T}’s office",
    "remind me to pay {T}",
    "tell {P}’s mum we're late",
)
EMAIL_T = (
    "my email is {E}",
    "send the invoice to {E}",
    "write to {E} about the refund",
    "cc {E} please",
    "the address is {E}",
    "email {E} the photos",
    "forward it to {E}",
    "is {E} the right address",
    "reply to {E} tonight",
    "add {E} to the guest list",
    "use {E} for the login",
    "{E} is her new email",
)
PHONE_T = (
    "call {N}",
    "dial {N}",
    "my number is {N}",
    "text me on {N}",
    "her mobile is {N}",
    "ring {N} now",
    "you can reach him on {N}",
    "save the number {N}",
    "the plumber's phone number is {N}",
    "send a text to {N}",
    "call back {N}",
    "phone {N} after lunch",
    "tel {N}",
    "whatsapp {N}",
)
CARD_T = (
    "my card number is {C}",
    "pay with card {C}",
    "the visa ending is on {C}",
    "use card {C} for the order",
    "charge {C}",
    "card {C} expires next year",
    "add the credit card {C}",
)
IBAN_T = (
    "my iban is {I}",
    "send the rent to {I}",
    "transfer fifty euros to {I}",
    "the account is {I}",
    "pay the invoice into {I}",
    "bank details: {I}",
)
ID_T = (
    "my social security number is {D}",
    "her national id is {D}",
    "the id number is {D}",
    "my personal number is {D}",
    "fill in {D} as the id",
    "identity number {D}",
    "tax id {D}",
    "my id is {D}, please check it",
)
MIXED_T = (
    "text {P} at {N}",
    "email {P} at {E}",
    "{P}'s number is {N} and email {E}",
    "call {T} on {N}",
    "send {P}'s iban {I} to {E}",
    "my name is {P}, my number is {N}",
    "{P} paid with {C}",
    "id {D} belongs to {P}",
)
NEAR_T = (
    "add jasmine rice to the list",
    "call mom",
    "call my sister",
    "text dad i'm home",
    "ring the doorbell",
    "play some relaxing jazz",
    "turn on the kitchen lights",
    "set the thermostat to 21 degrees",
    "set a timer for 25 minutes",
    "wake me up at 6:45",
    "what's the weather in {city} tomorrow",
    "will it be sunny on saturday",
    "order 3 pizzas",
    "flight lh 2034 leaves at 17:05",
    "room 1204",
    "the code is 90210",
    "the meeting is on 2026-03-14",
    "it was 12/05/2024",
    "my score was 1,250,000",
    "version 3.11.7 is out",
    "ping 10.0.0.12",
    "from 1999 to 2004",
    "in 2031",
    "it costs 1299 euros",
    "the total is 45.99",
    "add 500 grams of flour",
    "dim the lights to 35 percent",
    "order number 4471",
    "track parcel 20417",
    "page 1482 of the manual",
    "set volume to 7",
    "lock the front door",
    "add basil, sage and ginger",
    "buy honey and olive oil",
    "play summer hits",
    "rose gold lamp on",
    "mark all as read",
    "pay the gas bill",
    "will you play the radio",
    "may i have the news",
    "grace period ends in june",
    "hope you are well",
    "say grace",
    "the frank truth",
    "max volume",
    "art museum hours",
    "brown bread and green tea",
    "turn the hall light off",
    "ring me a bell",
    "open the garage",
    "skip to the next song",
    "play the rolling stones",
    "play blue in green",
    "how far is it to {city}",
    "is the pharmacy open",
    "what's on my calendar",
    "read my messages",
    "turn the fan to high",
    "add cat litter and dish soap",
    "play reggae in the bedroom",
    "remind me to water the plants at 7",
    "how many ounces in a pound",
    "convert 30 celsius",
    "call the dentist",
    "email the landlord",
    "text the group chat",
    "the baker on the corner",
    "a tall glass of milk",
    "set the oven to 180",
    "play chapter 4 of the audiobook",
    "the score is 3 to 1",
    "turn it up to 11",
    "it's 2 degrees outside",
    "call home",
    "send the playlist to the living room speaker",
    "what's 15 percent of 80",
    "count to 10",
)
CITIES = (
    "lisbon",
    "jackson",
    "victoria",
    "florence",
    "kraków",
    "zürich",
    "accra",
    "abuja",
    "lima",
    "georgia",
    "charlotte",
    "jordan",
    "chad",
    "santiago",
    "hamilton",
    "lincoln",
)
TITLES = (
    "Dr.",
    "Dr",
    "Mr.",
    "Mrs.",
    "Ms",
    "Mx.",
    "Prof.",
    "doctor",
    "Miss",
    "Herr",
    "Madame",
    "Pani",
    "Señora",
    "Sir",
    "Coach",
    "Judge",
)
WORD_SURNAMES = (
    "Baker",
    "Cook",
    "Carpenter",
    "Mason",
    "Brown",
    "Green",
    "White",
    "Rice",
    "Bush",
    "Stone",
    "Hill",
    "Bell",
    "Page",
    "Price",
    "Rose",
    "Frost",
    "Snow",
    "Love",
    "Hope",
    "Day",
    "Park",
    "Lane",
    "Ford",
    "Fox",
    "Wolf",
    "Swift",
    "Hall",
    "Gold",
    "Sharp",
    "Waters",
    "Banks",
    "Strong",
    "Field",
    "Marsh",
    "Booth",
    "Short",
    "Little",
    "Young",
    "King",
    "Knight",
    "Moon",
    "Star",
)
_NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
_NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"
_NINO_UNUSED = ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ")  # prefixes never allocated
# Verhoeff tables (Aadhaar's check digit; Faker's aadhaar_id uses Luhn, which real numbers do not)
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
_INV = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)


def verhoeff_digit(number: str) -> str:
    c = 0
    for i, ch in enumerate(reversed(number)):
        c = _D[c][_P[(i + 1) % 8][int(ch)]]
    return str(_INV[c])


#: the "today" of every Faker value: national identifiers and dates of birth are drawn relative
#: to the current date (fi_FI/sv_SE/zh_CN ssn, pl_PL pesel), so without it the set changed when
#: the calendar did (the CI run after midnight on 2026-12-03 found it "stale")
FROZEN_NOW = _dt.datetime(2026, 1, 1, 12, 0, 0)


class _RealInstances(type):
    """isinstance() of a frozen class answers for the real one (Faker type-checks its dates)."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls.__mro__[1])


class _FrozenDate(_dt.date, metaclass=_RealInstances):
    @classmethod
    def today(cls):
        return cls(FROZEN_NOW.year, FROZEN_NOW.month, FROZEN_NOW.day)


class _FrozenDateTime(_dt.datetime, metaclass=_RealInstances):
    @classmethod
    def now(cls, tz=None):
        t = cls(*FROZEN_NOW.timetuple()[:6])
        return t if tz is None else t.replace(tzinfo=_dt.timezone.utc).astimezone(tz)

    @classmethod
    def today(cls):
        return cls.now()

    @classmethod
    def utcnow(cls):
        return cls.now()


_FROZEN_MODULE = types.SimpleNamespace(
    **{
        **{k: getattr(_dt, k) for k in dir(_dt) if not k.startswith("__")},
        "date": _FrozenDate,
        "datetime": _FrozenDateTime,
    }
)


class _FrozenFakerClock:
    """Within it, every loaded Faker module sees :data:`FROZEN_NOW` as the current time (the
    names each binds: the ``datetime`` module, or its ``date``/``datetime`` classes); leaving
    it restores them.  Call :meth:`cover` after a Faker locale loads more provider modules."""

    def __init__(self) -> None:
        self.saved: list[tuple[object, str, object]] = []

    def cover(self) -> int:
        """Freeze the Faker modules loaded since the last call; returns how many names it froze."""
        done = {(id(m), n) for m, n, _ in self.saved}
        before = len(self.saved)
        for name, mod in list(sys.modules.items()):
            if not name.startswith("faker") or mod is None:
                continue
            for attr, value in list(vars(mod).items()):
                new = (
                    _FROZEN_MODULE
                    if value is _dt
                    else _FrozenDateTime
                    if value is _dt.datetime
                    else _FrozenDate
                    if value is _dt.date
                    else None
                )
                if new is not None and (id(mod), attr) not in done:
                    self.saved.append((mod, attr, value))
                    setattr(mod, attr, new)
        return len(self.saved) - before

    def __enter__(self) -> "_FrozenFakerClock":
        self.cover()
        return self

    def __exit__(self, *exc) -> None:
        for mod, attr, value in reversed(self.saved):
            setattr(mod, attr, value)
        self.saved.clear()


class Gen:
    def __init__(self, seed: int, clock: _FrozenFakerClock | None = None):
        from faker import Faker

        self.rng = random.Random(seed)
        self.fakers: dict[str, object] = {}
        self._Faker = Faker
        self._seed = seed
        self.clock = clock

    def faker(self, loc: str):
        f = self.fakers.get(loc)
        if f is None:
            f = self._Faker(loc)
            if self.clock is not None:
                self.clock.cover()  # the locale's provider modules were loaded just now
            f.seed_instance(self._seed + sum(map(ord, loc)) * 7919)
            self.fakers[loc] = f
        return f

    # ---- PII values
    def person(self) -> str:
        f = self.faker(self.rng.choice(NAME_LOCALES))
        r = self.rng.random()
        if r < 0.45:
            return f"{f.first_name()} {f.last_name()}"
        if r < 0.85:
            return f.first_name()
        return f.last_name()

    def titled(self) -> tuple[str, str]:
        last = (
            self.rng.choice(WORD_SURNAMES)
            if self.rng.random() < 0.5
            else self.faker(self.rng.choice(NAME_LOCALES)).last_name()
        )
        return self.rng.choice(TITLES) + " ", last

    def email(self) -> str:
        f = self.faker(self.rng.choice(NAME_LOCALES[:20]))
        addr = f.ascii_free_email() if self.rng.random() < 0.5 else f.ascii_company_email()
        user, domain = addr.split("@")
        r = self.rng.random()
        if r < 0.35:
            return addr
        if r < 0.5:
            return f"{user} [at] {domain}"
        if r < 0.6:
            return f"{user}(at){domain}"
        if r < 0.68:
            return f"{user} [at] {domain.replace('.', ' [dot] ')}"
        if r < 0.8:
            return f"{user}\uff20{domain}"
        if r < 0.9:
            k = self.rng.randint(1, max(1, len(user) - 1))
            return f"{user[:k]}\u200b{user[k:]}@{domain}"
        return addr.upper()

    def phone(self) -> str:
        return self.faker(self.rng.choice(PHONE_LOCALES)).phone_number()

    def card(self) -> str:
        num = self.faker("en_US").credit_card_number(self.rng.choice(CARD_TYPES))
        r = self.rng.random()
        if r < 0.4:
            return num
        sep = " " if r < 0.85 else "-"
        return sep.join(num[i : i + 4] for i in range(0, len(num), 4))

    def iban(self) -> str:
        num = self.faker(self.rng.choice(IBAN_LOCALES)).iban()
        if self.rng.random() < 0.5:
            num = " ".join(num[i : i + 4] for i in range(0, len(num), 4))
        return num.lower() if self.rng.random() < 0.1 else num

    def national_id(self) -> str:
        loc, method = self.rng.choice(ID_SOURCES)
        if method == "nino":
            prefix = "ZZ"
            while prefix in _NINO_UNUSED:
                prefix = self.rng.choice(_NINO_FIRST) + self.rng.choice(_NINO_SECOND)
            d = "".join(str(self.rng.randint(0, 9)) for _ in range(6))
            v = prefix + " " + d[:2] + " " + d[2:4] + " " + d[4:] + " " + self.rng.choice("ABCD")
            return v if self.rng.random() < 0.6 else v.replace(" ", "")
        if method == "aadhaar_id":
            body = str(self.rng.randint(2, 9)) + "".join(str(self.rng.randint(0, 9)) for _ in range(10))
            v = body + verhoeff_digit(body)
            return v if self.rng.random() < 0.6 else f"{v[:4]} {v[4:8]} {v[8:]}"
        return str(getattr(self.faker(loc), method)())

    # ---- sentences
    def fill(self, tpl: str) -> tuple[str, list[list]]:
        text, spans = "", []
        pos = 0
        while True:
            a = tpl.find("{", pos)
            if a < 0:
                text += tpl[pos:]
                break
            b = tpl.index("}", a)
            text += tpl[pos:a]
            slot = tpl[a + 1 : b]
            kind, value = {
                "P": lambda: ("name", self.person()),
                "E": lambda: ("email", self.email()),
                "N": lambda: ("phone", self.phone()),
                "C": lambda: ("card", self.card()),
                "I": lambda: ("iban", self.iban()),
                "D": lambda: ("id", self.national_id()),
                "city": lambda: ("", self.rng.choice(CITIES)),
                "T": lambda: ("title", self.titled()),
            }[slot]()
            if kind == "title":
                title, last = value
                text += title
                kind, value = "name", last
            if kind:
                spans.append([kind, len(text), len(text) + len(value)])
            text += value
            pos = b + 1
        return text, spans

    def casing(self, text: str, spans: list[list]) -> str:
        """Voice transcripts: mostly lower case; some as typed (names capitalised), some shouted."""
        r = self.rng.random()
        if r < 0.5:  # lower-case everything but e-mail obfuscations and ids (case-preserving fields)
            return _apply(text, spans, str.lower, keep=("id", "iban"))
        if r < 0.6:
            return _apply(text, spans, str.upper, keep=("id",))
        if r < 0.7:
            return text[:1].upper() + text[1:]
        return text


def _apply(text: str, spans: list[list], fn, keep: tuple[str, ...]) -> str:
    out, pos = [], 0
    for kind, s, e in sorted(spans, key=lambda t: t[1]):
        out.append(fn(text[pos:s]))
        out.append(text[s:e] if kind in keep else fn(text[s:e]))
        pos = e
    out.append(fn(text[pos:]))
    res = "".join(out)
    assert len(res) == len(text), "case mapping changed the length"
    return res


def generate(seed: int = SEED) -> list[dict]:
    with _FrozenFakerClock() as clock:
        out = _generate(Gen(seed, clock))
        if clock.cover():  # a module loaded mid-generation drew from the real clock
            raise RuntimeError("a Faker module loaded during generation saw the real date: freeze it earlier")
        return out


def _generate(g: Gen) -> list[dict]:
    groups = {
        "name": NAME_T,
        "email": EMAIL_T,
        "phone": PHONE_T,
        "card": CARD_T,
        "iban": IBAN_T,
        "id": ID_T,
        "mixed": MIXED_T,
        "near-miss": NEAR_T,
    }
    out: list[dict] = []
    seen: set[str] = set()
    for group, n in COUNTS.items():
        made = tries = 0
        while made < n and tries < n * 20:
            tries += 1
            tpl = g.rng.choice(groups[group])
            text, spans = g.fill(tpl)
            if g.rng.random() < 0.12:
                opener = g.rng.choice(("hey ", "ok so ", "please ", "um, ", "alexa, ", "quick question, "))
                text = opener + text
                spans = [[k, s + len(opener), e + len(opener)] for k, s, e in spans]
            try:
                cased = g.casing(text, spans)
            except AssertionError:  # a letter whose case mapping changes length: keep as written
                cased = text
            if cased in seen:
                continue
            seen.add(cased)
            out.append({"group": group, "text": cased, "spans": spans})
            made += 1
    return out


def dump(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from a fresh generation")
    args = parser.parse_args(argv)
    data = dump(generate())
    if args.check:
        ok = args.out.is_file() and args.out.read_bytes() == data
        print("scrub eval set: identical" if ok else f"scrub eval set: {args.out} differs from a fresh generation")
        return 0 if ok else 1
    args.out.write_bytes(data)
    print(f"wrote {args.out}: {len(data.splitlines())} records, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
