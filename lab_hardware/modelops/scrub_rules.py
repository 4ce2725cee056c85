"""The hand-written scrubbing rules: a name gazetteer with context rules, e-mail and phone regexes.

Since issue 13 this is no longer the scrubber itself but one recogniser inside it
(``lab_hardware.modelops.scrub`` runs these rules next to Presidio's recognisers and
a trained name model), and the baseline ``bench/scrub.py`` compares against: its
rules carry the hand-written corpus (``tests/scrub_corpus.jsonl``) -- ambiguous
names decided by context -- which a statistical model alone does not.  What
follows is the original description, still true of these rules.

Devices scrub an utterance *before* feature extraction and decide on the
scrubbed text, so no model ever sees PII, and a replay built from scrubbed
captures reproduces the device's features (and signal digests) exactly.  The
replay store scrubs-checks again on arrival (defence in depth).  So this module
must be deterministic (same bytes in every process), idempotent
(``scrub(scrub(t)) == scrub(t)``) and cheap: it runs on every decision.

Placeholders: ``<name>``, ``<email>``, ``<phone>``.  Adjacent name words
("Grace Okafor", "Mary-Jane") collapse into one ``<name>``; a possessive keeps
its ``'s`` ("<name>'s playlist").

Rules, and the near-misses they leave alone
-------------------------------------------
E-mail
    ``local@domain.tld`` (RFC-ish local part ``[a-z0-9._%+-]``, dotted domain,
    alphabetic TLD of 2+ letters), any case.  Also the *spoken* form a voice
    front end produces, ``anna dot smith at example dot com`` (also with
    "underscore"/"dash" in the local part), when it ends in
    ``dot`` + a known TLD: it names a mailbox just as well.  Not e-mails:
    ``@home``, ``me @ 5``, ``user@localhost`` (no TLD), ``at home``.
Phone
    North-American numbers with or without separators (``555-123-4567``,
    ``555.123.4567``, ``(555) 123 4567``, ``5551234567``, ``1-555-123-4567``),
    ``+`` international numbers (``+1 555 123 4567``, ``+44 20 7946 0958``;
    8-15 digits), 7-digit local numbers with a dash (``555-0199``), each with
    an optional extension (``x12``, ``ext. 12``, ``extension 12``).  Not
    phones: durations, counts, times, years, dates, percentages, decimals and
    ranges ("555 seconds", "10:30", "2026", "2020-2026", "12 eggs", "75%",
    "3.14") -- a number must have a phone's digit count *and* grouping, and
    may not be glued to other digits or letters.  Spelled-out digits ("five
    five five ...") are not recognised.
Name
    Whole words from the gazetteer ``scrub_names.txt`` (a few hundred common
    English first names and surnames plus the scenario's synthetic names),
    case-insensitively, accents folded.  *Unambiguous* names are scrubbed
    wherever they occur.  *Ambiguous* names (marked ``*``: also a month,
    virtue, verb, colour, food, city or music word -- April, May, June, Grace,
    Hope, Will, Bill, Mark, Rose, Summer, Jordan, Paris, Austin, White, Rice,
    Olive, Miles, Swift ...) are scrubbed only in a *name context*:

    1. right after a contact verb (call, phone, dial, ring, text, message,
       email, remind, tell, ask, wake, invite, ping, notify, thank, meet,
       dear), optionally with a particle in between ("call back Will"), unless a
       determiner makes the verb a noun ("pay the phone bill");
    2. after ``to``/``with``/``from`` when a sending or sharing word occurs
       earlier in the utterance ("send the list to Grace", "share it with
       June"), but not in "lights to green" or "from April to June";
    3. as a possessive not preceded by a determiner ("Grace's playlist", but
       "a summer's day", "this May's");
    4. right before a third-person verb that takes a person (likes, loves,
       made, said, wants, sent ... : "the songs Grace likes");
    5. in "let X know";
    6. next to a name (no punctuation in between): a first-name-capable word
       before a decided surname ("Will Smith", "Miles Davis"), a
       surname-capable word after a decided first name ("Anna White",
       "Taylor Swift");
    7. coordinated with a decided name ("call Anna and Will", "call Anna,
       Will and Ben"; after a comma only a first name that ends the list);
    8. followed by "at"/"on" and an e-mail address or phone number ("... or
       Will at 555-123-4567").

    So "will it rain", "set an alarm for May 5", "play Summer of 69", "la vie
    en rose", "weather in Paris", "add rice", "warm white" stay as they are,
    while "call Will", "text June at ...", "Grace's list" are scrubbed.  Rules
    6 and 7 look only at words decided to be names in the *same* pass, never
    at an existing ``<name>`` placeholder: a second pass then has no more
    evidence than the first, which is what makes scrubbing idempotent.

Known over-scrubbing, on purpose (the safe side): public figures whose names
are common names are scrubbed like anyone else ("play Taylor Swift" ->
"play <name>"); a bare 10-digit number is taken for a phone number.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path

#: Placeholder of each PII kind; ``find`` reports these kinds.
PLACEHOLDERS = {"name": "<name>", "email": "<email>", "phone": "<phone>"}
KINDS = tuple(PLACEHOLDERS)
NAMES_FILE = Path(__file__).with_name("scrub_names.txt")

# Lookbehinds also refuse ">" (the end of a placeholder): text glued to a span that a
# first pass replaced must be judged as it was judged next to the original characters,
# or a second pass could find more (idempotence).

# ---- e-mail ------------------------------------------------------------------------------
_TLDS = (
    "com",
    "org",
    "net",
    "edu",
    "gov",
    "io",
    "co",
    "uk",
    "de",
    "fr",
    "es",
    "it",
    "nl",
    "ca",
    "au",
    "us",
    "info",
    "biz",
    "me",
    "app",
    "dev",
    "ai",
)
_EMAIL = re.compile(
    r"(?<![\w.%+>-])[a-z0-9._%+-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,24}(?![\w-])",
    re.I,
)
_SPOKEN_EMAIL = re.compile(
    r"\b[a-z0-9_%+-]+(?:\s+(?:dot|underscore|dash|hyphen)\s+[a-z0-9_%+-]+)*"
    r"\s+at\s+[a-z0-9-]+(?:\s+(?:dot|dash|hyphen)\s+[a-z0-9-]+)*"
    r"\s+dot\s+(?:" + "|".join(_TLDS) + r")\b",
    re.I,
)

# ---- phone -------------------------------------------------------------------------------
_EXT = r"(?:\s*(?:ext\.?|extension|x)\s*\d{1,6})?"
_PHONE = re.compile(
    r"(?<![\w+.>])(?:"
    r"(?P<intl>\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4})"
    r"|(?P<nanp>(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-]?)\d{3}[ .-]?\d{4})"
    r"|(?P<local>\d{3}-\d{4})"
    r")" + _EXT + r"(?!\w)",
    re.I,
)

# ---- names -------------------------------------------------------------------------------
# Words (with inner apostrophes: "o'connor", "grace's", "don't"), placeholders, and each
# punctuation mark as a token of its own, so that "Anna, white lights" are not neighbours.
_TOKEN = re.compile(r"<(?:name|email|phone)>|\w+(?:['\u2019]\w+)*|[^\w\s]")
_WORD = re.compile(r"\w+")
_APOS = ("'s", "\u2019s")

_CONTACT_VERBS = frozenset(
    {
        "call",
        "phone",
        "dial",
        "ring",
        "text",
        "txt",
        "message",
        "msg",
        "email",
        "mail",
        "remind",
        "tell",
        "ask",
        "wake",
        "invite",
        "ping",
        "notify",
        "thank",
        "meet",
        "dear",
        "facetime",
        "whatsapp",
        "sms",
        "congratulate",
    }
)
_PARTICLES = frozenset({"back", "up"})
_PREPOSITIONS = frozenset({"to", "with", "from"})
_SHARE_WORDS = frozenset(
    {
        "send",
        "share",
        "forward",
        "give",
        "show",
        "pass",
        "introduce",
        "invite",
        "text",
        "email",
        "mail",
        "message",
        "call",
        "messages",
        "texts",
        "emails",
        "calls",
        "voicemail",
        "voicemails",
        "meeting",
        "chat",
        "talk",
        "speak",
        "sms",
        "ring",
        "phone",
    }
)
_DETERMINERS = frozenset(
    {
        "a",
        "an",
        "the",
        "this",
        "that",
        "last",
        "next",
        "every",
        "one",
        "each",
        "our",
        "my",
        "your",
        "their",
        "his",
        "her",
        "its",
    }
)
_PERSON_VERBS = frozenset(
    {
        "likes",
        "loves",
        "liked",
        "loved",
        "made",
        "makes",
        "said",
        "says",
        "wants",
        "wanted",
        "needs",
        "sent",
        "shared",
        "asked",
        "recommended",
        "recommends",
        "prefers",
        "texted",
        "called",
        "emailed",
        "wrote",
        "mentioned",
        "picked",
        "chose",
        "added",
        "booked",
    }
)
_COORD = frozenset({"and", "or", "&"})
_LIST_END = frozenset({"and", "or", "&", ",", ""})
_AT_ON = frozenset({"at", "on"})
_CONTACT_PLACEHOLDERS = frozenset({"<email>", "<phone>"})

_FIRST, _LAST = 1, 2


def _fold(word: str) -> str:
    """Lower-case, accents removed (``José`` -> ``jose``)."""
    word = word.lower()
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


@lru_cache(maxsize=1)
def gazetteer() -> tuple[dict[str, int], dict[str, int]]:
    """(unambiguous, ambiguous) names -> bit set of _FIRST/_LAST, from scrub_names.txt."""
    plain: dict[str, int] = {}
    ambiguous: dict[str, int] = {}
    section = 0
    for n, raw in enumerate(NAMES_FILE.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line in ("[first]", "[last]"):
            section = _FIRST if line == "[first]" else _LAST
            continue
        if not section:
            raise ValueError(f"{NAMES_FILE}:{n}: name outside a [first]/[last] section")
        amb = line.endswith("*")
        name = _fold(line.rstrip("*").strip())
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{NAMES_FILE}:{n}: {name!r} is not one word")
        target = ambiguous if amb else plain
        target[name] = target.get(name, 0) | section
    for name in set(plain) & set(ambiguous):  # ambiguous anywhere wins: the careful rule
        ambiguous[name] |= plain.pop(name)
    return plain, ambiguous


def _prefilter_words() -> frozenset[str]:
    plain, amb = gazetteer()
    words: set[str] = set()
    for name in (*plain, *amb):
        words.update(_WORD.findall(name))  # "o'connor" -> "o", "connor"
    return frozenset(words)


_PLAIN, _AMB = gazetteer()


def _token_info() -> dict[str, tuple[int, int, int]]:
    """token -> (status 1 name / 2 ambiguous / 3 placeholder, kinds, length of a possessive 's)."""
    out: dict[str, tuple[int, int, int]] = {}
    for status, names in ((2, _AMB), (1, _PLAIN)):
        for name, kinds in names.items():
            out[name] = (status, kinds, 0)
            for apos in _APOS:
                out[name + apos] = (status, kinds, 2)
    for ph in PLACEHOLDERS.values():
        out[ph] = (3, 0, 0)
    return out


_INFO = _token_info()
_NOT_A_NAME = (0, 0, 0)
_PLACEHOLDER = (3, 0, 0)
_PREFILTER_BYTES = frozenset(w.encode() for w in _prefilter_words() if w.isascii())
# ASCII bytes: upper -> lower, anything that is not a word character -> space.
_ASCII_FOLD = bytes(
    (c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122 or c == 95 or c >= 128) else 32)
    for c in range(256)
)


def _phone_ok(m: re.Match) -> bool:
    if m.group("intl") is not None:
        return 8 <= sum(c.isdigit() for c in m.group("intl")) <= 15
    return True


def _pii_spans(text: str, *, email: bool = True, spoken: bool = True, phone: bool = True) -> list[tuple[str, int, int]]:
    """E-mail and phone spans (non-overlapping, e-mails first)."""
    spans: list[tuple[str, int, int]] = []
    if email:
        spans.extend(("email", m.start(), m.end()) for m in _EMAIL.finditer(text))
    if spoken:
        for m in _SPOKEN_EMAIL.finditer(text):
            if not any(s < m.end() and m.start() < e for _, s, e in spans):
                spans.append(("email", m.start(), m.end()))
    if phone:
        for m in _PHONE.finditer(text):
            if _phone_ok(m) and not any(s < m.end() and m.start() < e for _, s, e in spans):
                spans.append(("phone", m.start(), m.end()))
    return spans


def _name_spans(text: str, taken: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Name spans outside ``taken`` (e-mail/phone spans, read as their placeholders)."""
    if taken:  # decide on the text with e-mails/phones replaced, then shift spans back
        parts, shifts, pos, delta = [], [], 0, 0
        for kind, a, b in sorted(taken, key=lambda t: t[1]):
            ph = PLACEHOLDERS[kind]
            parts += (text[pos:a], ph)
            end2 = a - delta + len(ph)  # where the placeholder ends in the replaced text
            delta += (b - a) - len(ph)
            shifts.append((end2, delta))
            pos = b
        parts.append(text[pos:])
        spans = _name_spans("".join(parts), [])
        out = []
        for kind, s, e in spans:
            d = 0
            for end2, dd in shifts:
                if end2 <= s:
                    d = dd
            out.append((kind, s + d, e + d))
        return out
    if text.isascii():  # lower() keeps positions; tokens are found again in order below
        low = text.lower()
        keys = _TOKEN.findall(low)
        starts = None
    else:
        keys, starts = [], []
        for m in _TOKEN.finditer(text):
            keys.append(m.group() if m.group()[0] == "<" else _fold(m.group()))
            starts.append(m.start())
    get = _INFO.get
    info = [get(k, _NOT_A_NAME) for k in keys]
    status = [x[0] for x in info]
    if 2 in status:
        n = len(keys)
        shared_before = [False] * n
        seen = False
        for i in range(n):
            shared_before[i] = seen
            seen = seen or keys[i] in _SHARE_WORDS
        changed = True
        while changed:  # fixpoint: rules 6 and 7 depend on decisions of neighbours
            changed = False
            for i in range(n):
                if status[i] == 2 and _in_name_context(i, keys, info, status, shared_before):
                    status[i] = 1
                    changed = True
    spans: list[tuple[str, int, int]] = []
    if 1 not in status:
        return spans
    pos = 0
    last_poss = 0
    for i, st in enumerate(status):
        if starts is None:
            # between two tokens there are only non-word characters, so the next
            # occurrence of a token's text is that token
            pos = low.find(keys[i], pos)
            s = pos
            pos += len(keys[i])
        else:
            s = starts[i]
        if st != 1:
            continue
        e = s + len(keys[i]) - info[i][2]
        if spans and not last_poss and text[spans[-1][2] : s] in (" ", "-"):
            spans[-1] = ("name", spans[-1][1], e)  # "Grace Okafor", "Mary-Jane" -> one <name>
        else:
            spans.append(("name", s, e))
        last_poss = info[i][2]
    return spans


def _in_name_context(i: int, keys: list[str], info: list[tuple], status: list[int], shared_before: list[bool]) -> bool:
    n = len(keys)
    prev = keys[i - 1] if i > 0 else ""
    nxt = keys[i + 1] if i + 1 < n else ""
    poss = info[i][2]
    # 1. contact verb (optionally + particle) right before -- a verb, not a noun after a
    #    determiner ("pay the phone bill", "a text message")
    if (
        prev in _CONTACT_VERBS
        and not (i > 1 and keys[i - 2] in _DETERMINERS)
        or (prev in _PARTICLES and i > 1 and keys[i - 2] in _CONTACT_VERBS)
    ):
        return True
    # 2. to/with/from after a sending or sharing word
    if prev in _PREPOSITIONS and shared_before[i - 1]:
        return True
    # 3. possessive, unless it reads like "a summer's day"
    if poss and prev not in _DETERMINERS:
        return True
    # 4. followed by a verb that takes a person as subject
    if nxt in _PERSON_VERBS and not poss:
        return True
    # 5. let X know
    if prev == "let" and nxt == "know":
        return True
    # 6. next to a decided name of the complementary kind (placeholders never count)
    if info[i][1] & _FIRST and not poss and i + 1 < n and status[i + 1] == 1 and info[i + 1][1] & _LAST:
        return True
    if info[i][1] & _LAST and i > 0 and status[i - 1] == 1 and info[i - 1][1] & _FIRST and not info[i - 1][2]:
        return True
    # 7. coordinated with a decided name: "Anna and Will", "Anna, Will and Ben"
    if prev in _COORD and i > 1 and status[i - 2] == 1:
        return True
    if prev == "," and i > 1 and status[i - 2] == 1 and info[i][1] & _FIRST and nxt in _LIST_END:
        return True
    # 8. followed by "at"/"on" and an e-mail or phone number ("Will at 555-...")
    if nxt in _AT_ON and i + 2 < n and keys[i + 2] in _CONTACT_PLACEHOLDERS:
        return True
    return False


def find(text: str) -> list[tuple[str, int, int]]:
    """PII in ``text`` as ``(kind, start, end)``, sorted by position, non-overlapping."""
    if text.isascii():
        # Fast path (most utterances carry no PII): one byte translation gives
        # lower-cased words with punctuation split off, and a digit count.
        raw = text.encode()
        folded = raw.translate(_ASCII_FOLD)
        email = b"@" in raw
        spoken = b" at " in folded and b" dot " in folded
        phone = len(raw) - len(raw.translate(None, b"0123456789")) >= 7
        names = not _PREFILTER_BYTES.isdisjoint(folded.split())
        if not (email or spoken or phone or names):
            return []
        spans = _pii_spans(text, email=email, spoken=spoken, phone=phone)
    else:
        spans = _pii_spans(text)
        names = True
    if names:
        spans.extend(_name_spans(text, spans))
    spans.sort(key=lambda s: s[1])
    return spans


def scrub(text: str) -> str:
    """``text`` with every PII span replaced by its placeholder (see the module rules)."""
    spans = find(text)
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for kind, s, e in spans:
        out.append(text[pos:s])
        out.append(PLACEHOLDERS[kind])
        pos = e
    out.append(text[pos:])
    return "".join(out)


def scrub_batch(texts: list[str]) -> list[str]:
    """``[scrub(t) for t in texts]`` (the form devices and model builds use)."""
    return [scrub(t) for t in texts]
