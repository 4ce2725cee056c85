"""Seeded utterance streams that lab devices receive.

The flagship course needs a stream that (a) looks like real voice-assistant
traffic, (b) carries synthetic PII so that consent and scrubbing have
something to do, and (c) is reproducible to the byte from a seed, because
replays, grading checks and model provenance digests all compare against it.
Everything here is therefore pure Python driven by one ``random.Random(seed)``
per call: no numpy randomness, no ``hash()``, and no iteration over sets, so
the output does not depend on ``PYTHONHASHSEED``, the platform or numpy.

Records are drawn one after another from the same generator, so the first
``k`` records of ``voice_intents(seed, n)`` equal ``voice_intents(seed, k)``:
a device that stops early has seen a prefix of the scenario's stream.

All names, e-mail addresses and phone numbers are synthetic: e-mail domains
are reserved example domains and phone numbers use the fictional 555 area code.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

#: Intent labels; model output label ``i`` means ``INTENTS[i]``.
INTENTS = ("weather", "timer", "music", "call", "lights", "shopping")

#: Labels each stream function emits, so a scenario can check its ``intents``.
LABELS: dict[str, tuple[str, ...]] = {"voice_intents": INTENTS}

#: PII kinds in the order they are listed in a record's ``pii`` field.
PII_KINDS = ("name", "email", "phone")

# How often each intent occurs (call is deliberately not the most frequent,
# so a model's bias towards it shows up as false positives, not as accuracy).
_INTENT_WEIGHTS = (0.20, 0.17, 0.20, 0.15, 0.16, 0.12)

# Relative PII propensity per intent.  The chance that an utterance carries
# PII is ``min(1, pii_fraction * propensity)``; with the intent weights above
# the expected overall share of PII utterances is about ``pii_fraction``.
_PII_PROPENSITY = {
    "weather": 0.0,
    "timer": 1.0,
    "music": 0.6,
    "call": 2.9,
    "lights": 0.0,
    "shopping": 2.5,
}

# Share of utterances that are genuinely ambiguous (the label is one of the
# plausible readings); this is what keeps a good linear model below 100 %.
_AMBIGUOUS_RATE = 0.06

# Spoken openers.  Only surface variation for the baseline; the candidate
# model's known defect is tied to one of them (see build_models.py).
_OPENERS = (
    ("", 0.68),
    ("hey ", 0.11),
    ("ok ", 0.06),
    ("please ", 0.05),
    ("um ", 0.04),
    ("can you ", 0.03),
    ("quick one, ", 0.03),
)

FIRST_NAMES = (
    "anna",
    "ben",
    "carla",
    "david",
    "elena",
    "farid",
    "grace",
    "hiro",
    "ines",
    "jonas",
    "keira",
    "lars",
    "maya",
    "nikhil",
    "olga",
    "pablo",
    "quinn",
    "rosa",
    "samir",
    "tara",
    "umar",
    "vera",
    "wei",
    "ximena",
    "yusuf",
    "zoe",
    "amara",
    "bruno",
    "chloe",
    "dmitri",
    "emeka",
    "fatima",
    "gustav",
    "hana",
    "ivan",
    "julia",
    "kofi",
    "lena",
    "mateo",
    "nora",
)
LAST_NAMES = (
    "schmidt",
    "okafor",
    "tanaka",
    "rossi",
    "novak",
    "garcia",
    "nguyen",
    "kowalski",
    "haddad",
    "larsen",
    "moreau",
    "silva",
    "ivanova",
    "kim",
    "osei",
    "fischer",
    "patel",
    "brennan",
    "costa",
    "lindqvist",
    "mendes",
    "yilmaz",
    "adeyemi",
    "dubois",
    "hoffmann",
    "jensen",
    "kaur",
    "lopez",
    "murphy",
    "nakamura",
    "oconnor",
    "petrov",
    "quiroga",
    "reyes",
    "sato",
    "torres",
    "varga",
    "weber",
    "zhang",
    "abbott",
)
_EMAIL_DOMAINS = (
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "post.example.org",
)

_CITIES = (
    "berlin",
    "lagos",
    "osaka",
    "lisbon",
    "denver",
    "toronto",
    "madrid",
    "nairobi",
    "seattle",
    "oslo",
    "melbourne",
    "chicago",
    "new york",
    "paris",
    "mumbai",
    "cape town",
    "dublin",
    "austin",
)
_WHEN = (
    "today",
    "tomorrow",
    "tonight",
    "this weekend",
    "on monday",
    "this afternoon",
    "tomorrow morning",
    "later today",
    "on friday",
)
_DURATIONS = (
    "30 seconds",
    "one minute",
    "2 minutes",
    "five minutes",
    "10 minutes",
    "12 minutes",
    "a quarter of an hour",
    "20 minutes",
    "half an hour",
    "45 minutes",
    "an hour",
    "90 minutes",
)
_CLOCK = (
    "6 am",
    "6:30",
    "seven",
    "7:15 am",
    "eight o'clock",
    "9 pm",
    "noon",
    "half past five",
)
_FOOD = ("pasta", "eggs", "rice", "pizza", "tea", "bread", "laundry", "oven")
_TASKS = (
    "take the bread out",
    "check the oven",
    "leave for school",
    "water the plants",
    "start the meeting",
    "take her medicine",
)
_ARTISTS = (
    "taylor swift",
    "miles davis",
    "burna boy",
    "radiohead",
    "adele",
    "daft punk",
    "nina simone",
    "bts",
    "fleetwood mac",
    "kendrick lamar",
    "norah jones",
    "the beatles",
    "rosalia",
    "bach",
)
_SONGS = (
    "blue in green",
    "yesterday",
    "hey ya",
    "clocks",
    "dreams",
    "feeling good",
    "one more time",
    "hello",
    "la vie en rose",
    "humble",
    "bohemian rhapsody",
    "redbone",
)
_GENRES = (
    "jazz",
    "lo-fi",
    "rock",
    "afrobeats",
    "classical",
    "hip hop",
    "indie",
    "ambient",
    "reggae",
    "k-pop",
)
_ROOMS = (
    "kitchen",
    "living room",
    "bedroom",
    "hallway",
    "office",
    "bathroom",
    "garage",
    "porch",
    "kids room",
    "dining room",
)
_COLORS = ("warm white", "blue", "red", "green", "purple", "daylight", "orange")
_PERCENT = ("10", "20", "30", "40", "50", "60", "75", "100")
_ITEMS = (
    "milk",
    "eggs",
    "bread",
    "coffee",
    "oat milk",
    "bananas",
    "rice",
    "toilet paper",
    "dish soap",
    "apples",
    "cheese",
    "tomatoes",
    "batteries",
    "olive oil",
    "yogurt",
    "cat food",
)
_QTY = ("two", "three", "a dozen", "a pack of", "some", "4", "6")
_CONTACTS = (
    "mom",
    "dad",
    "grandma",
    "my sister",
    "my brother",
    "the office",
    "the dentist",
    "work",
    "the plumber",
    "home",
    "the school",
)

# Templates: ``{slot}`` names resolve through _SLOTS (or the PII fillers).
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "weather": (
        "what's the weather in {city}",
        "will it rain in {city} {when}",
        "how hot is it going to be {when}",
        "do i need an umbrella {when}",
        "weather forecast for {city}",
        "is it going to snow in {city} {when}",
        "how cold is it outside",
        "what's the temperature in {city} right now",
        "is it sunny in {city}",
        "tell me the forecast for {when}",
        "will it be windy {when}",
        "what should i wear {when}",
    ),
    "timer": (
        "set a timer for {dur}",
        "start a {dur} timer",
        "countdown {dur}",
        "timer {dur} for the {food}",
        "how much time is left on my timer",
        "cancel the {food} timer",
        "wake me up in {dur}",
        "set an alarm for {clock}",
        "pause the timer",
        "add {dur} to the timer",
        "remind me in {dur} to {task}",
        "alarm at {clock} please",
    ),
    "music": (
        "play {song} by {artist}",
        "play some {genre}",
        "put on {artist}",
        "skip this song",
        "turn the volume up",
        "shuffle my {genre} playlist",
        "what song is this",
        "play the next track",
        "pause the music",
        "play {artist} in the {room}",
        "i want to hear {song}",
        "play {genre} in the {room}",
    ),
    "call": (
        "call {contact}",
        "phone {contact}",
        "dial {contact}",
        "ring {contact}",
        "video call {contact}",
        "hang up",
        "redial the last number",
        "answer the call",
        "start a call with {contact}",
        "can you get {contact} on the line",
        "put {contact} on speaker",
    ),
    "lights": (
        "turn on the lights in the {room}",
        "turn off the {room} lights",
        "dim the lights",
        "set the {room} lights to {pct} percent",
        "make it brighter in the {room}",
        "switch the {room} lamp off",
        "change the lights to {color}",
        "lights off",
        "turn the lights up",
        "are the lights on in the {room}",
        "set the {room} to {color}",
    ),
    "shopping": (
        "add {item} to my shopping list",
        "put {item} on the list",
        "do we need {item}",
        "remove {item} from the shopping list",
        "what's on my shopping list",
        "order more {item}",
        "i need to buy {item}",
        "add {qty} {item} to the cart",
        "clear the shopping list",
        "buy {item} and {item2}",
        "we're out of {item}",
    ),
}

# Templates that carry PII.  ``{first}``/``{full}`` are names, ``{email}`` and
# ``{phone}`` the other kinds; the record's ``pii`` lists the kinds used.
_PII_TEMPLATES: dict[str, tuple[str, ...]] = {
    "timer": (
        "remind {first} in {dur} to {task}",
        "set a timer for {dur} and tell {first}",
        "wake {first} up at {clock}",
        "remind me to ring {full} in {dur}",
    ),
    "music": (
        "play {first}'s playlist",
        "play the mix {full} made",
        "put on the songs {first} likes",
    ),
    "call": (
        "call {full}",
        "call {first}",
        "dial {phone}",
        "ring {first} on {phone}",
        "send an email to {email}",
        "video call {full}",
        "call {phone}",
        "email {first} at {email}",
        "text {full} at {phone}",
        "phone {full} on their mobile",
        "call back {phone}",
    ),
    "shopping": (
        "send the shopping list to {email}",
        "share the list with {full}",
        "text the shopping list to {phone}",
        "send the list to {first}",
        "email my shopping list to {email}",
        "add {item} to {first}'s list",
    ),
}

# Utterances with more than one plausible reading, and the intents they may
# carry.  "call" is kept out on purpose: the baseline should have almost no
# false positives on it, so the candidate's defect stands out.
_AMBIGUOUS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("turn it up", ("music", "lights")),
    ("turn it down a little", ("music", "lights")),
    ("turn it off", ("music", "lights", "timer")),
    ("stop", ("music", "timer")),
    ("cancel that", ("timer", "shopping")),
    ("what about tomorrow", ("weather", "timer")),
    ("add that one", ("shopping", "music")),
    ("set it for {clock}", ("timer", "lights")),
    ("a bit more please", ("music", "lights")),
    ("same as yesterday", ("weather", "shopping", "music")),
)

_SLOTS: dict[str, tuple[str, ...]] = {
    "city": _CITIES,
    "when": _WHEN,
    "dur": _DURATIONS,
    "clock": _CLOCK,
    "food": _FOOD,
    "task": _TASKS,
    "artist": _ARTISTS,
    "song": _SONGS,
    "genre": _GENRES,
    "room": _ROOMS,
    "color": _COLORS,
    "pct": _PERCENT,
    "item": _ITEMS,
    "item2": _ITEMS,
    "qty": _QTY,
    "contact": _CONTACTS,
}


def _weighted(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    """One draw from (value, weight) pairs; a single rng call keeps streams aligned."""
    x = rng.random() * sum(w for _, w in options)
    for value, w in options:
        x -= w
        if x < 0:
            return value
    return options[-1][0]


def _email(rng: random.Random, first: str, last: str) -> str:
    style = rng.randrange(4)
    local = (
        f"{first}.{last}",
        f"{first}_{last}",
        f"{first[0]}{last}",
        f"{first}{rng.randrange(1, 100)}",
    )[style]
    return f"{local}@{rng.choice(_EMAIL_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    a, b = rng.randrange(100, 1000), rng.randrange(0, 10000)
    style = rng.randrange(3)
    return (
        f"555-{a}-{b:04d}",
        f"(555) {a} {b:04d}",
        f"+1 555 {a} {b:04d}",
    )[style]


def _fill(rng: random.Random, template: str, pii: list[str]) -> str:
    """Fill slots left to right; PII slots append their kind to ``pii``.

    Slots are resolved in template order (not via a dict of all fillers) so
    that the number of rng draws, and hence the rest of the stream, depends
    only on the template chosen.
    """
    out: list[str] = []
    rest = template
    first = last = None
    while "{" in rest:
        head, _, tail = rest.partition("{")
        slot, _, rest = tail.partition("}")
        out.append(head)
        if slot in ("first", "full", "email"):
            if first is None:
                first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            if slot == "email":
                out.append(_email(rng, first, last))
                pii.append("email")
            else:
                name = first.title() if slot == "first" else f"{first.title()} {last.title()}"
                out.append(name)
                pii.append("name")
        elif slot == "phone":
            out.append(_phone(rng))
            pii.append("phone")
        else:
            out.append(rng.choice(_SLOTS[slot]))
    out.append(rest)
    return "".join(out)


def _surface(rng: random.Random, text: str) -> str:
    """Spoken/typed variation: opener, capitalisation, trailing punctuation."""
    text = _weighted(rng, _OPENERS) + text
    style = rng.random()
    if style < 0.35:
        text = text[:1].upper() + text[1:]
    elif style < 0.40:
        text = text.upper()
    end = rng.random()
    if end < 0.15:
        text += "?" if text.lower().startswith(("what", "how", "is ", "do ", "are", "will")) else "."
    elif end < 0.20:
        text += " please"
    return text


def voice_intents(seed: int, n: int, *, pii_fraction: float = 0.3) -> list[dict]:
    """The ``voice-intents`` scenario stream: ``n`` labelled utterances.

    Each record is ``{"id", "text", "intent", "pii"}``; ``pii`` lists the
    synthetic PII kinds in the text (subset of ``PII_KINDS``, in that order,
    once each).  About ``pii_fraction`` of utterances carry PII, mostly calls
    and shopping-list sharing, sometimes timers and music.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= pii_fraction <= 1.0:
        raise ValueError(f"pii_fraction must be within [0, 1], got {pii_fraction}")
    rng = random.Random(seed)
    intents_w = tuple(zip(INTENTS, _INTENT_WEIGHTS))
    records: list[dict] = []
    for i in range(n):
        pii: list[str] = []
        if rng.random() < _AMBIGUOUS_RATE:
            template, readings = rng.choice(_AMBIGUOUS)
            intent = rng.choice(readings)
        else:
            intent = _weighted(rng, intents_w)
            p_pii = min(1.0, pii_fraction * _PII_PROPENSITY[intent])
            if rng.random() < p_pii and intent in _PII_TEMPLATES:
                template = rng.choice(_PII_TEMPLATES[intent])
            else:
                template = rng.choice(_TEMPLATES[intent])
        text = _surface(rng, _fill(rng, template, pii))
        kinds = [k for k in PII_KINDS if k in pii]
        records.append({"id": i, "text": text, "intent": intent, "pii": kinds})
    return records


def to_jsonl(records: Iterable[dict]) -> bytes:
    """Canonical JSONL bytes (sorted keys, compact): what digests are taken of."""
    return b"".join(
        json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in records
    )


def write_jsonl(records: Iterable[dict], path: Path | str) -> Path:
    """Write records as canonical JSONL (see ``to_jsonl``) and return the path."""
    path = Path(path)
    path.write_bytes(to_jsonl(records))
    return path
