"""PII scrubbing on Microsoft Presidio: names, e-mails, phones, cards, IBANs and national ids
become typed placeholders.

Devices scrub an utterance *before* feature extraction and decide on the scrubbed text,
so no model ever sees PII, and a replay built from scrubbed captures reproduces the
device's features (and signal digests) exactly; the replay store and the consent check
run ``find`` again on what arrives (defence in depth).  So this module must be
deterministic (same bytes in every process and on every machine), idempotent
(``scrub(scrub(t)) == scrub(t)``) and cheap enough for a device: it runs on every decision.

How (docs/scrubbing.md has the figures):

1. **Normalise** a view of the text: zero-width characters (U+200B-D, U+2060, U+FEFF,
   soft hyphen) removed, Unicode NFKC (full-width ``＠``/digits become ASCII), and the
   written-out e-mail forms ``[at]``/``(at)``/``{at}`` and ``[dot]``/``(dot)`` turned into
   ``@``/``.``.  Every character of the view remembers where it came from, so spans are
   reported -- and replaced -- in the original text; text outside PII is left as it was.
2. **Analyse** the view with Presidio's ``AnalyzerEngine`` (``scrub_recognizers``):
   Presidio's pattern recognisers (e-mail, credit cards with Luhn, IBAN with its check,
   national ids with their check digits), ``phonenumbers`` for phones of every region,
   the trained name model (``scrub_ner``) and the hand-written rules (``scrub_rules``).
   A pre-filter keeps it cheap: the numeric recognisers run only when the text has five
   digits or more, the e-mail one only when it has an ``@``.
3. **Resolve** overlaps (one span, the more specific kind wins: e-mail, IBAN, card, id,
   phone, name) and **anonymise** with Presidio's ``AnonymizerEngine`` ("replace"
   operators writing ``<name>``, ``<email>``, ``<phone>``, ``<card>``, ``<iban>``, ``<id>``).
4. **Repeat** on the result until a pass finds nothing new (placeholders are never
   matched): the name model reads its neighbours, and a neighbour that became ``<name>``
   is new context.  ``find`` returns the spans of all passes, so ``scrub(scrub(t)) ==
   scrub(t)`` by construction, not by luck.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from functools import lru_cache

from lab_hardware.modelops import scrub_ner, scrub_rules

# Presidio logs an INFO line on every analysis ('Fetching all recognizers for language en'):
# in a process that logs at INFO and scrubs each capture (the lab's supervisor) that is most of
# its log.  Its warnings and errors still come through.
for _name in ("presidio-analyzer", "presidio-anonymizer"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: Placeholder of each PII kind; ``find`` reports these kinds.
PLACEHOLDERS = {
    "name": "<name>",
    "email": "<email>",
    "phone": "<phone>",
    "card": "<card>",
    "iban": "<iban>",
    "id": "<id>",
}
KINDS = tuple(PLACEHOLDERS)
#: More specific kinds win an overlap (an e-mail that contains a name is an e-mail).
_PRIORITY = {"email": 0, "iban": 1, "card": 2, "id": 3, "phone": 4, "name": 5}
_PLACEHOLDER_RE = re.compile(scrub_ner.PLACEHOLDER)
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)
_OBFUSCATED = re.compile(r"\s*[\[({]\s*(at|dot)\s*[\])}]\s*", re.I)
_MAX_PASSES = 8

# gazetteer() and the rule vocabularies stay importable from here (tests, docs).
gazetteer = scrub_rules.gazetteer


# ---- 1. the normalised view ---------------------------------------------------------------
def _view(text: str) -> tuple[str, list[int] | None]:
    """(normalised text, source index of each of its characters) -- ``None`` when the view
    is the text itself (ASCII with no written-out "[at]": almost every utterance)."""
    if text.isascii() and not ("[" in text or "(" in text or "{" in text):
        return text, None
    chars: list[str] = []
    src: list[int] = []
    # NFKC per cluster (a base character and the combining marks after it), so that each
    # output character can be traced to the characters it came from.
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and (unicodedata.combining(text[j]) or text[j] in "\u200d"):
            j += 1
        cluster = text[i:j].translate(_ZERO_WIDTH)
        for c in unicodedata.normalize("NFKC", cluster) if cluster else "":
            chars.append(c)
            src.append(i)
        i = j
    norm = "".join(chars)
    if _OBFUSCATED.search(norm):
        out_chars: list[str] = []
        out_src: list[int] = []
        pos = 0
        for m in _OBFUSCATED.finditer(norm):
            before = norm[max(0, m.start() - 1) : m.start()]
            after = norm[m.end() : m.end() + 1]
            if not (before and (before.isalnum() or before in "._-") and after and after.isalnum()):
                continue  # "(at)" that is not inside an address
            out_chars += chars[pos : m.start()]
            out_src += src[pos : m.start()]
            out_chars.append("@" if m.group(1).lower() == "at" else ".")
            out_src.append(src[m.start()])
            pos = m.end()
        out_chars += chars[pos:]
        out_src += src[pos:]
        chars, src = out_chars, out_src
        norm = "".join(chars)
    if norm == text:
        return text, None
    return norm, src


# ---- 2 + 3. one pass ------------------------------------------------------------------------
def _digit_count(text: str) -> int:
    return (
        sum(c.isdigit() for c in text)
        if not text.isascii()
        else len(text) - len(text.encode().translate(None, b"0123456789"))
    )


def _analyse(view: str) -> list[tuple[str, int, int]]:
    """Presidio results on the normalised view -> (kind, start, end), overlaps unresolved."""
    # Imported here: Presidio (and spaCy under it) takes seconds to import, and ``labs`` (the
    # learner SDK) imports this module; only a process that scrubs pays for it.
    from lab_hardware.modelops import scrub_recognizers

    engine = scrub_recognizers.analyzer("@" in view, _digit_count(view) >= 5)
    results = engine.analyze(view, language="en")
    low = None
    ctx = None
    uuids = None
    out = []
    for r in results:
        if r.score < scrub_recognizers.THRESHOLD:
            if ctx is None:
                ctx = scrub_recognizers.context_words()
                low = view.lower()
            words = ctx.get(r.recognition_metadata.get("recognizer_name", ""), ())
            if not any(w in low for w in words):
                continue
        kind = scrub_recognizers.ENTITY_KIND.get(r.entity_type)
        if kind is None or r.end <= r.start:
            continue
        if kind in _TOKEN_KINDS and _glued(view, r.start, r.end):
            continue
        if uuids is None:
            uuids = [m.span() for m in _UUID.finditer(view)] if "-" in view else []
        if any(a <= r.start and r.end <= b for a, b in uuids):
            continue
        out.append((kind, r.start, r.end))
    return out


#: Kinds that are a whole token of their own.  Several of Presidio's patterns have no word
#: boundary (PESEL, Aadhaar, ...), so they match digits inside a longer token: a session id
#: ``ce9e1dd02ea34060925890fc8c50f48b`` holds a valid PESEL, and about one random uuid, hex
#: digest or base64 token in a few hundred held some id.  A number glued to a letter or
#: digit on either side is part of that longer token (a digest, a key, a serial), not a number
#: somebody wrote down.
_TOKEN_KINDS = frozenset({"id", "card", "iban", "phone"})


#: A UUID (8-4-4-4-12 hex digits) is an identifier a program made: its groups read as phones
#: ("17678424-4288") and names, and nothing inside one is PII.
_UUID = re.compile(r"(?<![\w-])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![\w-])")


def _glued(view: str, start: int, end: int) -> bool:
    return (start > 0 and view[start - 1].isalnum()) or (end < len(view) and view[end].isalnum())


def _resolve(spans: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Non-overlapping spans sorted by position: overlapping spans become their union, of the
    most specific kind among them."""
    out: list[list] = []
    for kind, s, e in sorted(spans, key=lambda t: (t[1], -t[2], _PRIORITY[t[0]])):
        if out and s < out[-1][2]:
            last = out[-1]
            last[2] = max(last[2], e)
            if _PRIORITY[kind] < _PRIORITY[last[0]]:
                last[0] = kind
        else:
            out.append([kind, s, e])
    return [(k, s, e) for k, s, e in out]


def _outside_placeholders(text: str, spans: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Spans clipped so that they never cover a placeholder (pieces without a word character dropped)."""
    holes = [(m.start(), m.end()) for m in _PLACEHOLDER_RE.finditer(text)] if "<" in text else []
    if not holes:
        return spans
    out = []
    for kind, s, e in spans:
        pieces = [(s, e)]
        for a, b in holes:
            nxt = []
            for ps, pe in pieces:
                if b <= ps or pe <= a:
                    nxt.append((ps, pe))
                    continue
                if ps < a:
                    nxt.append((ps, a))
                if b < pe:
                    nxt.append((b, pe))
            pieces = nxt
        for ps, pe in pieces:
            piece = text[ps:pe]
            if any(c.isalnum() for c in piece):
                lead = len(piece) - len(piece.lstrip(" ,.;:-'"))
                trail = len(piece) - len(piece.rstrip(" ,.;:-'"))
                out.append((kind, ps + lead, pe - trail))
    return out


def _find_once(text: str) -> list[tuple[str, int, int]]:
    view, src = _view(text)
    spans = _analyse(view)
    if src is not None:
        mapped = []
        for kind, s, e in spans:
            start = src[s]
            end = src[e - 1] + 1
            # a cluster ("e" + combining accent) maps to its first character: extend over it
            while end < len(text) and unicodedata.combining(text[end]):
                end += 1
            mapped.append((kind, start, end))
        spans = mapped
    return _resolve(_outside_placeholders(text, _resolve(spans)))


# ---- 4. passes until nothing new ------------------------------------------------------------
def _replace(text: str, spans: list[tuple[str, int, int]]) -> tuple[str, list[tuple[int, int, int]]]:
    """Text with spans replaced, and (new start, new end, original start) of each kept stretch."""
    parts: list[str] = []
    kept: list[tuple[int, int, int]] = []
    pos = out_len = 0
    for kind, s, e in spans:
        if s > pos:
            kept.append((out_len, out_len + s - pos, pos))
            parts.append(text[pos:s])
            out_len += s - pos
        ph = PLACEHOLDERS[kind]
        parts.append(ph)
        out_len += len(ph)
        pos = e
    if pos < len(text):
        kept.append((out_len, out_len + len(text) - pos, pos))
        parts.append(text[pos:])
    return "".join(parts), kept


def find(text: str) -> list[tuple[str, int, int]]:
    """PII in ``text`` as ``(kind, start, end)``, sorted by position, non-overlapping.

    Spans of later passes (found once earlier spans had become placeholders) are included,
    so replacing exactly these spans gives ``scrub(text)``."""
    spans = _find_once(text)
    if not spans:
        return spans
    for _ in range(_MAX_PASSES):
        current, kept = _replace(text, spans)
        more = _find_once(current)
        if not more:
            return spans
        for kind, s, e in more:  # a span of ``current`` never covers a placeholder: map back
            for ks, ke, orig in kept:
                if ks <= s < ke:
                    spans.append((kind, orig + s - ks, orig + min(e, ke) - ks))
                    break
        spans.sort(key=lambda t: t[1])
    return spans


@lru_cache(maxsize=1)
def _anonymizer():
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig

    ops = {kind.upper(): OperatorConfig("replace", {"new_value": ph}) for kind, ph in PLACEHOLDERS.items()}
    return AnonymizerEngine(), ops


def scrub(text: str) -> str:
    """``text`` with every PII span replaced by its placeholder (see the module docstring)."""
    spans = find(text)
    if not spans:
        return text
    from presidio_anonymizer.entities import RecognizerResult

    engine, ops = _anonymizer()
    results = [RecognizerResult(kind.upper(), s, e, 1.0) for kind, s, e in spans]
    return engine.anonymize(text, results, operators=ops, merge_entities_with_spaces=False).text


def scrub_batch(texts: list[str]) -> list[str]:
    """``[scrub(t) for t in texts]`` (the form devices and model builds use)."""
    return [scrub(t) for t in texts]


def warm_up() -> None:
    """Import Presidio, build the analyzers and load the name model now (a device calls this
    before its first decision, so the first utterance is not charged for it)."""
    from lab_hardware.modelops import scrub_recognizers

    for email in (False, True):
        for numeric in (False, True):
            scrub_recognizers.analyzer(email, numeric)
    _anonymizer()
    scrub("call Anna at 555-123-4567 or anna@example.com, card 4111 1111 1111 1111")


# ---- pre-scrubbed streams ------------------------------------------------------------------
# A device decides on a fixed, seeded stream of utterances; scrubbing is a pure function of the
# text and of this scrubber.  So a scenario can ship its stream already scrubbed (built once with
# this module: ``python -m labs.scenarios scrub-stream NAME``), and a device that is handed one
# which provably pairs with its stream and with this very scrubber reads it instead of loading
# Presidio (about 2 s of CPU and 70 MB a device; a grading namespace starts three).  Anything
# that does not match - another stream, any change to the scrubber's code, data or libraries -
# and the device scrubs live, as before.  tests/test_scrub_stream.py keeps the shipped one
# current and checks it against live scrubbing.

SCRUBBED_SCHEMA = "livelab.scrubbed-stream/v1"
_FINGERPRINT_DISTS = ("presidio-analyzer", "presidio-anonymizer", "phonenumbers")


@lru_cache(maxsize=1)
def fingerprint() -> str:
    """sha256 of everything ``scrub`` depends on: this package's scrubber code and data
    (``scrub*`` but the trainer) and the versions of the libraries it calls."""
    from importlib import metadata
    from pathlib import Path

    h = hashlib.sha256()
    here = Path(__file__).parent
    for p in sorted(here.glob("scrub*")):
        if p.is_file() and not p.name.endswith("_train.py"):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    for dist in _FINGERPRINT_DISTS:
        h.update(f"{dist}=={metadata.version(dist)}\0".encode())
    return h.hexdigest()


def write_scrubbed_stream(texts: list[str], stream_sha256: str, path, *, scenario: str = "") -> None:
    """Write ``scrub(t)`` for every ``t`` of a stream, with the header that pairs it with the
    stream's bytes and this scrubber; gzip (reproducible: no name, mtime 0) if ``path`` ends
    in ``.gz``."""
    import gzip
    import json
    from pathlib import Path

    header = {
        "schema": SCRUBBED_SCHEMA,
        "scenario": scenario,
        "stream_sha256": stream_sha256,
        "scrubber": fingerprint(),
        "count": len(texts),
    }
    body = "\n".join([json.dumps(header, sort_keys=True)] + [json.dumps(scrub(t)) for t in texts]) + "\n"
    data = body.encode("utf-8")
    path = Path(path)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def read_scrubbed_stream(path, stream_sha256: str, count: int) -> tuple[list[str] | None, str]:
    """(scrubbed texts, "") when ``path`` pairs with the stream (its sha256 and length) and
    with this scrubber; else (None, the one-line reason) and the caller scrubs live."""
    import gzip
    import json
    from pathlib import Path

    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        lines = raw.decode("utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
        texts = [json.loads(line) for line in lines[1:]]
    except (OSError, EOFError, ValueError) as exc:
        return None, f"{path}: unreadable ({exc.__class__.__name__})"
    if not isinstance(header, dict) or header.get("schema") != SCRUBBED_SCHEMA:
        return None, f"{path}: not a {SCRUBBED_SCHEMA} file"
    if header.get("scrubber") != fingerprint():
        return None, f"{path}: made by another scrubber (code, data or library versions changed)"
    if header.get("stream_sha256") != stream_sha256:
        return None, f"{path}: made for another stream"
    if header.get("count") != count or len(texts) != count or not all(isinstance(t, str) for t in texts):
        return None, f"{path}: {len(texts)} texts for a stream of {count}"
    return texts, ""
