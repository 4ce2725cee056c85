"""Build ``scrub_ner.json``, the scrubber's name model, from seeded synthetic utterances.

    python -m lab_hardware.modelops.scrub_ner_train [--out PATH] [--check]

Training data: voice-assistant utterances from the templates below (not the evaluation
set's: ``tests/scrub_eval_gen.py`` has its own templates and seed), with names drawn from
Faker in many locales (Latin with accents, Polish, Cyrillic, Greek, CJK, Hangul, Arabic,
Hebrew, Devanagari, West African ...), under three casings (voice transcripts are
mostly lower case).  Negatives are the same assistant's ordinary requests, including
words that are also names ("jasmine rice", "say grace", "will it rain", "rose gold").
A logistic regression (scikit-learn, one thread) learns one weight per feature; the
weights are rounded to integers so the shipped model decides identically everywhere.
``--check`` rebuilds in memory and exits 1 if the result differs from the committed file.
Faker is a development dependency: devices only load the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from lab_hardware.modelops import scrub_ner

SEED = 1301
N_SENTENCES = 40000
C = 0.5
SCALE = 100  # weights are stored as round(w * SCALE)
PRUNE = 3  # |integer weight| below this is dropped (keeps the file small)
FAKER_VERSION_NOTE = "faker pinned in pyproject (dev)"

#: Faker locales names are drawn from (weights: how often).
LOCALES = (
    "en_US",
    "en_GB",
    "en_IE",
    "en_AU",
    "en_IN",
    "en_NG",
    "yo_NG",
    "ig_NG",
    "ha_NG",
    "tw_GH",
    "sw",
    "zu_ZA",
    "de_DE",
    "de_AT",
    "fr_FR",
    "fr_CA",
    "es_ES",
    "es_MX",
    "es_AR",
    "pt_BR",
    "pt_PT",
    "it_IT",
    "nl_NL",
    "nl_BE",
    "da_DK",
    "sv_SE",
    "no_NO",
    "fi_FI",
    "is_IS",
    "pl_PL",
    "cs_CZ",
    "sk_SK",
    "hu_HU",
    "ro_RO",
    "bg_BG",
    "hr_HR",
    "sl_SI",
    "lt_LT",
    "lv_LV",
    "et_EE",
    "ru_RU",
    "uk_UA",
    "el_GR",
    "tr_TR",
    "ar_AA",
    "ar_EG",
    "fa_IR",
    "he_IL",
    "hi_IN",
    "ta_IN",
    "bn_BD",
    "ne_NP",
    "zh_CN",
    "zh_TW",
    "ja_JP",
    "ko_KR",
    "vi_VN",
    "th_TH",
    "id_ID",
    "fil_PH",
    "az_AZ",
    "ka_GE",
    "hy_AM",
)

# ---- templates ----------------------------------------------------------------------------
# {P} a person (full, first or last name), {F} a first name, {T} title + surname,
# {E} an e-mail address, {N} a phone number; other slots are ordinary words.
POSITIVE = (
    "call {P}",
    "call {P} now",
    "please call {P}",
    "hey call {P} on speaker",
    "ring {P}",
    "phone {P} back",
    "dial {P}",
    "video call {P}",
    "facetime {P}",
    "call {P} at {N}",
    "text {P}",
    "text {P} that i'm running late",
    "send a text to {P}",
    "message {P} on whatsapp",
    "send {P} a message saying {msg}",
    "tell {P} {msg}",
    "ask {P} if {msg}",
    "remind {P} to {task}",
    "remind me to call {P} {when}",
    "remind me about {P}'s birthday",
    "email {P}",
    "email {P} at {E}",
    "send the {thing} to {P}",
    "share the {thing} with {P}",
    "forward this to {P}",
    "invite {P} to {event}",
    "set up a meeting with {P} {when}",
    "schedule lunch with {P}",
    "book a table for me and {P}",
    "what did {P} say",
    "did {P} call",
    "has {P} texted me",
    "is {P} home",
    "where is {P}",
    "when is {P} arriving",
    "{P} is coming over {when}",
    "{P} called",
    "{P} left a voicemail",
    "play {P}'s playlist",
    "open {P}'s list",
    "add {item} to {P}'s list",
    "read {P}'s message",
    "play the songs {P} likes",
    "play the mix {P} made",
    "put on what {P} recommended",
    "{P}, turn on the lights",
    "{F}, what's the weather",
    "hey {F}, set a timer",
    "it's {P}",
    "this is {P} speaking",
    "my name is {P}",
    "i am {P}",
    "call me {F}",
    "wake {P} up at {clock}",
    "call {T}",
    "book an appointment with {T}",
    "remind me to see {T} {when}",
    "text {T} the address",
    "{T} called about the results",
    "is {T} available {when}",
    "call {T} at {N}",
    "call {P} and {P}",
    "text {P}, {P} and {P}",
    "invite {P} and {P} to {event}",
    "message {P} or {P}",
    "send {P} an email at {E}",
    "call {P} on {N} or email {E}",
    "let {P} know {msg}",
    "thank {P} for {thing2}",
    "congratulate {P}",
    "say hi to {P}",
    "good morning {F}",
    "goodnight {F}",
    "dear {P}, {msg}",
    "from {P}: {msg}",
    "{P} says {msg}",
    "play music for {P}",
    "set a timer for {P}",
    "how old is {P}",
    "add {P} to my contacts",
    "save {N} as {P}",
    "{P}'s number is {N}",
    "{P}'s email is {E}",
    "contact {P}",
    "pick up {P} from {place}",
    "drive to {P}'s place",
    "navigate to {P}'s house",
    "the package for {P} arrived",
    "note that {P} owes me {amount}",
    "pay {P} back {amount}",
    "send {amount} to {P}",
    "split the bill with {P}",
    "ask {T} about the invoice",
)
NEGATIVE = (
    "what's the weather in {city}",
    "will it rain {when}",
    "will it snow in {city} {when}",
    "how hot will it be {when}",
    "do i need an umbrella {when}",
    "weather for {city} {when}",
    "set a timer for {dur}",
    "set an alarm for {clock}",
    "wake me up at {clock}",
    "cancel the timer",
    "how much time is left",
    "snooze for {dur}",
    "remind me to {task} {when}",
    "remind me in {dur}",
    "play {genre}",
    "play some {genre} music",
    "play {song}",
    "play {song} by {band}",
    "play {band}",
    "skip this song",
    "turn the volume up",
    "pause the music",
    "play the next track",
    "turn on the {room} lights",
    "turn off the lights in the {room}",
    "dim the {room} to {pct} percent",
    "set the lights to {color}",
    "change the lights to {color}",
    "make the {room} {color}",
    "add {item} to the shopping list",
    "add {qty} {item} to my list",
    "remove {item} from the list",
    "we need {item} and {item}",
    "buy {item}",
    "order more {item}",
    "what's on my shopping list",
    "call {contact}",
    "text {contact} that i'm on my way",
    "ring {contact}",
    "phone {contact}",
    "call the {biz}",
    "message the {biz}",
    "email the {biz} about {thing2}",
    "call {contact} back",
    "may i have {item}",
    "mark the task as done",
    "mark it as read",
    "pay the {bill}",
    "say grace before dinner",
    "i hope it's sunny {when}",
    "i will be late",
    "will you {task}",
    "bill me later",
    "jasmine rice and {item}",
    "add jasmine rice",
    "add basil and sage",
    "rose gold lights",
    "hunter green paint",
    "amber alert",
    "ruby red lights",
    "olive oil",
    "june is hot in {city}",
    "april showers",
    "remind me in may",
    "in august we travel",
    "summer playlist",
    "winter is coming",
    "the white house",
    "brown rice",
    "green tea",
    "play {song}",
    "a summer's day",
    "this may's rent",
    "from april to june",
    "chase the dog",
    "iris flowers",
    "lily pads",
    "daisy chain",
    "ivy on the wall",
    "dawn chorus",
    "crystal glasses",
    "frank opinion",
    "art class {when}",
    "max volume",
    "ray of light",
    "jack up the heat",
    "{dur} of {genre}",
    "the {biz} is closed {when}",
    "how far is {city}",
    "flights to {city}",
    "translate hello into {lang}",
    "what's {num} plus {num}",
    "order {num} pizzas",
    "room {num}",
    "the price of {item}",
    "i'm at home",
    "look at the dot on the map",
    "meet me @home",
    "the baker on main street",
    "a cook book",
    "the king of {city}",
    "a stone wall",
    "the bishop moved",
    "a mason jar",
    "fisher price toys",
    "the hill is steep",
    "a park bench",
    "the miller's tale",
    "the hunter came home",
    "a frost warning",
    "a young dog",
    # places: Faker's cities of many locales ({C}) where an assistant hears a place
    "weather forecast for {C}",
    "what's the temperature in {C} right now",
    "flights to {C}",
    "what time is it in {C}",
    "how far is {C}",
    "directions to {C}",
    "news from {C}",
    "is it raining in {C}",
    "weather in {C} {when}",
    "set the clock to {C} time",
    "drive to {C}",
    "redial the last number",
    "mute the call",
    "unmute",
    "resume the podcast",
    "set it for {clock}",
    "alarm at eight o'clock please",
    "wake me at nine o'clock",
)
#: Frames for ordinary words ({w}: a common English word from Faker's lorem list).
WORD_FRAMES = (
    "play {w} music",
    "turn the {w} to {w}",
    "set the {w} to max",
    "what is the {w}",
    "update to {w} {num}",
    "it's {num} {w}",
    "{w} is a {w}",
    "open the {w} app",
    "is it {w} {when}",
    "add {w} to the list",
    "show me the {w}",
    "how do i {w} the {w}",
    "tell me about {w}",
    "the {w} is {w}",
    "{w} {w} {w}",
    "call the {w}",
    "text the {w} {w}",
    "is the {w} {w}",
    "{w}, {w} and {w}",
    "my {w} is {w}",
    "send the {w} to the {w}",
    "share the {w} with the {w}",
    "remind me to {w} the {w}",
    "what's the {w} in {city}",
    "{w} {w} {w} {w} {w}",
    "is <email> {w}?",
    "call <phone> {w}",
    "email <email> {w} {w}",
    "<name>'s {w} {w}",
    "text <name> the {w}",
    "<name>, {w} the {w}",
    "play {song} by {band} in the {w}",
    "{w} at {clock}",
    "a {w} of {item}",
    # ordinary words where names also stand: next to a name, before a number, as an opener
    "her {w} is {N}",
    "his {w} is {E}",
    "the {w} is {num}",
    "pay with {w} {num}",
    "{P} and {P} {w} {w}",
    "is {P} {w} at the {w}",
    "{P} {w} {w} {w}",
    "{P}, {w} the {w}",
    "{w} {P}",
    "tell {P} the {w} is {w}",
    "my {w} {w} is {num}",
    "{w}, {w} the {w}",
    "{P}'s {w} {w} {w}",
    "{w} and {w} are {w}",
)
CITIES = (
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
    "kraków",
    "são paulo",
    "zürich",
    "accra",
    "kyiv",
    "warsaw",
    "hanoi",
    "seoul",
    "cairo",
    "jackson",
    "florence",
    "victoria",
    "charlotte",
    "san jose",
    "georgia",
    "virginia",
)
WHEN = (
    "today",
    "tomorrow",
    "tonight",
    "this weekend",
    "on monday",
    "on friday",
    "next week",
    "this afternoon",
    "later",
    "in the morning",
    "at noon",
    "on the 5th",
)
DURS = ("30 seconds", "one minute", "5 minutes", "ten minutes", "an hour", "half an hour", "90 minutes")
CLOCKS = ("6 am", "6:30", "seven", "7:15 am", "noon", "9 pm", "half past five", "midnight")
GENRES = (
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
    "salsa",
    "highlife",
    "bossa nova",
    "metal",
    "country",
    "gospel",
    "blues",
)
SONGS = (
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
    "summertime",
    "here comes the sun",
    "fly me to the moon",
    "autumn leaves",
    "moon river",
)
BANDS = (
    "radiohead",
    "daft punk",
    "the beatles",
    "fleetwood mac",
    "coldplay",
    "abba",
    "queen",
    "the rolling stones",
    "pink floyd",
    "nirvana",
    "u2",
    "bts",
    "blackpink",
    "the cure",
)
ROOMS = (
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
    "attic",
    "basement",
    "garden",
)
COLORS = (
    "warm white",
    "blue",
    "red",
    "green",
    "purple",
    "daylight",
    "orange",
    "rose",
    "amber",
    "lavender",
    "teal",
    "hunter green",
    "ruby",
    "coral",
    "ivory",
)
ITEMS = (
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
    "jasmine rice",
    "basil",
    "sage",
    "ginger",
    "mint",
    "pepper",
    "honey",
    "butter",
    "chicken",
    "salmon",
    "pasta",
    "cherries",
    "dates",
    "figs",
    "lemons",
    "candy",
    "brie",
    "cumin",
)
QTY = ("two", "three", "a dozen", "a pack of", "some", "4", "6", "a kilo of")
CONTACTS = (
    "mom",
    "dad",
    "grandma",
    "grandpa",
    "my sister",
    "my brother",
    "my wife",
    "my husband",
    "the office",
    "home",
    "work",
    "my boss",
    "my son",
    "my daughter",
    "auntie",
    "the kids",
)
BIZ = ("dentist", "plumber", "school", "bank", "pharmacy", "garage", "vet", "landlord", "doctor's office")
TASKS = (
    "take the bread out",
    "check the oven",
    "leave for school",
    "water the plants",
    "start the meeting",
    "take her medicine",
    "feed the cat",
    "call the bank",
    "pay rent",
)
MSGS = (
    "i'm running late",
    "dinner is ready",
    "the door is open",
    "we're out of milk",
    "the meeting moved",
    "happy birthday",
    "see you soon",
    "call me back",
)
THINGS = ("list", "photos", "address", "recipe", "document", "shopping list", "playlist", "link")
THINGS2 = ("the invoice", "the party", "the gift", "dinner", "the repair", "the delay")
EVENTS = ("dinner", "the party", "lunch", "the meeting", "my birthday", "the game")
PLACES = ("school", "the station", "the airport", "work", "practice", "the gym")
BILLS = ("electric bill", "rent", "water bill", "phone bill")
LANGS = ("french", "spanish", "yoruba", "polish", "japanese", "swahili")
AMOUNTS = ("20 dollars", "ten euros", "5 pounds", "a hundred", "50 bucks")
PCTS = ("10", "20", "30", "50", "75", "100")
TITLES_OUT = (
    "Dr.",
    "Dr",
    "Mr.",
    "Mr",
    "Mrs.",
    "Mrs",
    "Ms.",
    "Ms",
    "Prof.",
    "doctor",
    "Miss",
    "Herr",
    "Frau",
    "Madame",
    "Monsieur",
    "Señor",
    "Señora",
    "Pan",
    "Pani",
    "Sir",
    "Coach",
    "uncle",
    "aunt",
)
#: Surnames that are also English words: after a title they are names ("Dr. Baker").
WORD_SURNAMES = (
    "Baker",
    "Cook",
    "Miller",
    "Hunter",
    "Fisher",
    "Mason",
    "Brown",
    "Green",
    "White",
    "Black",
    "Young",
    "King",
    "Bishop",
    "Rice",
    "Bush",
    "Moss",
    "Stone",
    "Wood",
    "Hill",
    "Bell",
    "Page",
    "Price",
    "Rose",
    "Frost",
    "Snow",
    "Little",
    "Long",
    "Strong",
    "Wise",
    "Love",
    "Hope",
    "May",
    "March",
    "Day",
    "Knight",
    "Park",
    "Lane",
    "Ford",
    "Cross",
    "Banks",
    "Mills",
    "Church",
    "Fox",
    "Wolf",
    "Lamb",
    "Bird",
    "Crane",
    "Drake",
    "Swift",
    "Field",
    "Glass",
    "Hall",
    "Marsh",
    "Gold",
    "Silver",
    "Sharp",
    "Booth",
    "Short",
)
#: First names that are also English words.
WORD_FIRSTS = (
    "Will",
    "Grace",
    "May",
    "June",
    "April",
    "Rose",
    "Hope",
    "Mark",
    "Bill",
    "Jasmine",
    "Amber",
    "Ruby",
    "Olive",
    "Ginger",
    "Basil",
    "Sage",
    "Iris",
    "Lily",
    "Daisy",
    "Ivy",
    "Dawn",
    "Crystal",
    "Summer",
    "Faith",
    "Joy",
    "Chase",
    "Frank",
    "Art",
    "Max",
    "Ray",
    "Jack",
    "Sue",
    "Pat",
    "Rob",
    "Victoria",
    "Florence",
    "Georgia",
    "Austin",
    "Jordan",
)

_SLOTS = {
    "city": CITIES,
    "when": WHEN,
    "dur": DURS,
    "clock": CLOCKS,
    "genre": GENRES,
    "song": SONGS,
    "band": BANDS,
    "room": ROOMS,
    "color": COLORS,
    "item": ITEMS,
    "qty": QTY,
    "contact": CONTACTS,
    "biz": BIZ,
    "task": TASKS,
    "msg": MSGS,
    "thing": THINGS,
    "thing2": THINGS2,
    "event": EVENTS,
    "place": PLACES,
    "bill": BILLS,
    "lang": LANGS,
    "amount": AMOUNTS,
    "pct": PCTS,
    "num": ("3", "12", "42", "101", "2026", "7"),
}


WORDS_FILE = Path(__file__).with_name("scrub_ner_words.txt.gz")


def _words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(common words: Faker's English lorem list, a broad list: English words, names removed)."""
    import gzip

    from faker.providers.lorem.en_US import Provider

    broad = tuple(
        w for w in gzip.decompress(WORDS_FILE.read_bytes()).decode().splitlines() if w and not w.startswith("#")
    )
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    from spacy.lang.en.stop_words import STOP_WORDS

    common = sorted(set(Provider.word_list) | set(STOP_WORDS) | set(ENGLISH_STOP_WORDS))
    return tuple(w for w in common if "'" not in w and "\u2019" not in w), broad


class _Names:
    """Seeded names from Faker, many locales (imported only when building)."""

    def __init__(self, rng: random.Random):
        from faker import Faker

        self.rng = rng
        self.fakers = []
        for i, loc in enumerate(LOCALES):
            f = Faker(loc)
            f.seed_instance(SEED * 1000 + i)
            self.fakers.append(f)

    def _faker(self):
        return self.rng.choice(self.fakers)

    def first(self) -> str:
        if self.rng.random() < 0.12:
            return self.rng.choice(WORD_FIRSTS)
        f = self._faker()
        return (
            (f.first_name_female() if self.rng.random() < 0.5 else f.first_name_male())
            if hasattr(f, "first_name_female")
            else f.first_name()
        )

    def last(self) -> str:
        if self.rng.random() < 0.08:
            return self.rng.choice(WORD_SURNAMES)
        return self._faker().last_name()

    def person(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            f = self._faker()
            name = f"{f.first_name()} {f.last_name()}"
            return name
        if r < 0.85:
            return self.first()
        return self.last()

    def city(self) -> str:
        f = self._faker()
        return f.city() if hasattr(f, "city") else self.rng.choice(CITIES)

    def titled(self) -> str:
        return f"{self.rng.choice(TITLES_OUT)} {self.last()}"


def _email(rng: random.Random) -> str:
    user = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
    return (
        f"{user}{rng.choice(['', '.k', '_7', '22'])}@{rng.choice(['example.com', 'mail.example.org', 'example.net'])}"
    )


def _phone(rng: random.Random) -> str:
    return rng.choice(
        ["+44 20 7946 {0:04d}", "555-{0:04d}", "(555) 321 {0:04d}", "030 1234{0:04d}", "+48 512 34{0:04d}"]
    ).format(rng.randint(0, 9999))


def _case(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.5:
        return text.lower()
    if r < 0.58:
        return text.upper()
    if r < 0.66:
        return text[:1].upper() + text[1:]
    return text  # names as Faker spells them, the rest lower case


def generate(seed: int, n: int) -> list[tuple[str, list[tuple[int, int]], list[tuple[int, int]]]]:
    """``n`` utterances: (text, name spans, spans to ignore (e-mails, phones))."""
    rng = random.Random(seed)
    names = _Names(rng)
    common, broad = _words()
    out = []
    for _ in range(n):
        r = rng.random()
        tpl = rng.choice(POSITIVE) if r < 0.45 else rng.choice(NEGATIVE) if r < 0.7 else rng.choice(WORD_FRAMES)
        parts: list[tuple[str, str]] = []  # (kind, text)
        pos = 0
        while True:
            a = tpl.find("{", pos)
            if a < 0:
                parts.append(("", tpl[pos:]))
                break
            b = tpl.index("}", a)
            parts.append(("", tpl[pos:a]))
            slot = tpl[a + 1 : b]
            if slot == "P":
                person = names.person()
                if " " in person and rng.random() < 0.08:  # a second pass: the first name already replaced
                    first, last = person.split(" ", 1)
                    parts += [("", "<name> "), ("name", last)]
                elif rng.random() < 0.06:
                    parts.append(("", "<name>"))
                else:
                    parts.append(("name", person))
            elif slot == "C":
                parts.append(("", names.city() if rng.random() < 0.6 else rng.choice(CITIES)))
            elif slot == "w":
                parts.append(("", rng.choice(common if rng.random() < 0.4 else broad)))
            elif slot == "F":
                parts.append(("name", names.first()))
            elif slot == "T":
                title, last = names.titled().split(" ", 1)
                parts += [("", title + " "), ("name", last)]
            elif slot == "E":
                parts.append(("skip", _email(rng)) if rng.random() < 0.6 else ("", "<email>"))
            elif slot == "N":
                parts.append(("skip", _phone(rng)) if rng.random() < 0.6 else ("", "<phone>"))
            else:
                parts.append(("", rng.choice(_SLOTS[slot])))
            pos = b + 1
        if rng.random() < 0.15:
            parts.insert(
                0,
                (
                    "",
                    rng.choice(
                        (
                            "hey ",
                            "ok ",
                            "please ",
                            "um ",
                            "can you ",
                            "quick one, ",
                            "alexa, ",
                            "hey google, ",
                            "siri, ",
                            "computer, ",
                            "ok google ",
                        )
                    ),
                ),
            )
        casing = rng.random()
        text, spans, skip = "", [], []
        for kind, piece in parts:
            if piece.startswith("<") and piece.rstrip().endswith(">"):
                pass  # placeholders keep their case
            elif casing < 0.5:
                piece = piece.lower()
            elif casing < 0.58:
                piece = piece.upper()
            elif casing > 0.95:
                piece = " ".join(w[:1].upper() + w[1:] for w in piece.split(" "))
            elif kind == "":
                piece = piece.lower()
            if kind == "name":
                spans.append((len(text), len(text) + len(piece)))
            elif kind == "skip":
                skip.append((len(text), len(text) + len(piece)))
            text += piece
        if 0.58 <= casing < 0.75:
            text = text[:1].upper() + text[1:]
        out.append((text, spans, skip))
    return out


CONTEXT_DROPOUT = 0.35


def examples(data, seed: int = SEED):
    """Feature lists and labels of every word token (tokens inside e-mails/phones skipped).

    For a share of tokens (``CONTEXT_DROPOUT``) only the word's own features are kept, so
    that the model learns what a name looks like and not only where the training templates
    put one: utterances in the field put names in contexts no template had."""
    rng = random.Random(seed + 1)
    X, y = [], []
    for text, spans, skip in data:
        toks_pos = scrub_ner.tokens(text)
        toks = [t for t, _, _ in toks_pos]
        lows = [t.lower() for t in toks]
        mixed = scrub_ner.is_mixed_case(text)
        for i, (tok, s, e) in enumerate(toks_pos):
            if not scrub_ner.is_word(tok) or any(a < e and s < b for a, b in skip):
                continue
            if rng.random() < CONTEXT_DROPOUT:
                X.append(list(scrub_ner.word_features(tok, mixed)))
            else:
                X.append(scrub_ner.features(toks, i, mixed, lows))
            y.append(int(any(a <= s < b for a, b in spans)))
    return X, y


def train(seed: int = SEED, n: int = N_SENTENCES) -> dict:
    """Fit the model and return its JSON document.

    Some Faker locales keep names in sets, whose order follows Python's string hashing: the
    data (and so the model) is the same only under one hash seed, so the fit always runs in a
    process with ``PYTHONHASHSEED=0``."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model.json"
            code = (
                "import sys; from pathlib import Path; from lab_hardware.modelops import scrub_ner_train as T; "
                f"Path(sys.argv[1]).write_bytes(T.dump(T.train({seed}, {n})))"
            )
            subprocess.run(
                [sys.executable, "-c", code, str(out)],
                check=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},
                cwd=Path(__file__).resolve().parents[2],
            )
            return json.loads(out.read_bytes())
    return _fit(seed, n)


def _fit(seed: int, n: int) -> dict:
    import numpy as np
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    X, y = examples(generate(seed, n))
    vec = DictVectorizer(dtype=np.float64)
    M = vec.fit_transform([{f: 1.0 for f in feats} for feats in X])
    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=2000, random_state=0, class_weight={0: 1.0, 1: 2.0})
    with threadpool_limits(limits=1):
        clf.fit(M, np.array(y))
    weights = {}
    for name, w in zip(vec.get_feature_names_out(), clf.coef_[0]):
        iw = int(round(float(w) * SCALE))
        if abs(iw) >= PRUNE:
            weights[str(name)] = iw
    return {
        "format": "livelab.scrub-ner/v1",
        "bias": int(round(float(clf.intercept_[0]) * SCALE)),
        "meta": {
            "seed": seed,
            "sentences": n,
            "tokens": len(y),
            "C": C,
            "scale": SCALE,
            "prune": PRUNE,
            "locales": list(LOCALES),
            "features": len(weights),
        },
        "weights": dict(sorted(weights.items())),
    }


def dump(doc: dict) -> bytes:
    return (json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=False) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=scrub_ner.MODEL_FILE)
    parser.add_argument("--check", action="store_true", help="exit 1 if a rebuild differs from --out")
    args = parser.parse_args(argv)
    data = dump(train())
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == data
        print("scrub_ner: rebuild identical" if same else "scrub_ner: rebuild DIFFERS from " + str(args.out))
        return 0 if same else 1
    args.out.write_bytes(data)
    print(f"scrub_ner: wrote {args.out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
