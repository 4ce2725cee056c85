"""PII scrubbing: a hand-written corpus, the whole scenario stream, idempotence, determinism.

Devices decide on scrubbed text and the replay store refuses text with PII,
so the scrubber is checked on the exact stream the lab plays (every synthetic
name, e-mail and phone number must go) and on the near-misses a voice
assistant hears all day (durations, times, months, colours, "will it rain").
Speed is measured by bench/ and the report, not asserted here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab_hardware.modelops import scrub, scrub_rules
from labs import streams

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    json.loads(line)
    for line in (ROOT / "tests" / "scrub_corpus.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]
STREAM_SEED, STREAM_N = 20261125, 20000

_EMAIL_LIKE = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_PHONE_LIKE = re.compile(r"\+?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}|\d{3}-\d{4}")


@pytest.fixture(scope="module")
def stream() -> list[dict]:
    return streams.voice_intents(STREAM_SEED, STREAM_N)


# ---- corpus ------------------------------------------------------------------------------
def test_corpus_is_broad():
    kinds = {c["kind"] for c in CORPUS}
    assert len(CORPUS) >= 120
    assert {"email", "phone", "name", "mixed", "near-email", "near-phone", "near-name"} <= kinds
    unchanged = [c for c in CORPUS if c["expected"] == c["text"]]
    assert len(unchanged) >= 50, "near-misses must stay unchanged"
    assert any(c["text"].isupper() and c["expected"] != c["text"] for c in CORPUS), "an ALL CAPS case"
    assert sum(c["expected"].count("<") >= 2 for c in CORPUS) >= 10, "several PII in one utterance"
    assert len({c["text"] for c in CORPUS}) == len(CORPUS), "duplicate corpus cases"


@pytest.mark.parametrize("case", CORPUS, ids=[f"{i:03d}-{c['kind']}" for i, c in enumerate(CORPUS)])
def test_corpus(case):
    got = scrub.scrub(case["text"])
    assert got == case["expected"], case["text"]
    assert scrub.scrub(got) == got  # idempotent
    spans = scrub.find(case["text"])
    assert (
        [k for k, _, _ in spans] == re.findall(r"<(name|email|phone)>", got)
        if case["kind"] != "placeholder"
        else spans == []
    )


def test_find_reports_sorted_non_overlapping_spans():
    text = "text Grace Dubois at 555-589-4433 or grace.d@example.com"
    spans = scrub.find(text)
    assert spans == [("name", 5, 17), ("phone", 21, 33), ("email", 37, 56)]
    assert [text[s:e] for _, s, e in spans] == ["Grace Dubois", "555-589-4433", "grace.d@example.com"]


def test_gazetteer_is_broader_than_the_stream_and_covers_it():
    plain, ambiguous = scrub.gazetteer()
    names = set(plain) | set(ambiguous)
    stream_names = set(streams.FIRST_NAMES) | set(streams.LAST_NAMES)
    assert stream_names <= names
    assert len(names - stream_names) >= 300, "the gazetteer must not be just the stream's names"
    for word in (
        "april",
        "may",
        "june",
        "grace",
        "will",
        "bill",
        "mark",
        "rose",
        "summer",
        "hope",
        "jordan",
        "paris",
        "austin",
        "white",
        "green",
        "rice",
        "olive",
    ):
        assert word in ambiguous, word
    # the rule words must never be names, or idempotence would break
    rule_words = (
        scrub_rules._CONTACT_VERBS
        | scrub_rules._SHARE_WORDS
        | scrub_rules._DETERMINERS
        | scrub_rules._PERSON_VERBS
        | scrub_rules._COORD
        | scrub_rules._PARTICLES
        | scrub_rules._PREPOSITIONS
        | {"let", "know", "at", "on"}
    )
    assert not rule_words & names


# ---- the scenario stream -----------------------------------------------------------------
def test_stream_has_no_pii_left_after_scrubbing(stream):
    names = set(streams.FIRST_NAMES) | set(streams.LAST_NAMES)
    for rec in stream:
        out = scrub.scrub(rec["text"])
        words = set(re.findall(r"\w+", out.lower()))
        assert not words & names, (rec["text"], out)
        assert not _EMAIL_LIKE.search(out), (rec["text"], out)
        assert not _PHONE_LIKE.search(out), (rec["text"], out)
        for kind in rec["pii"]:
            assert scrub.PLACEHOLDERS[kind] in out, (kind, rec["text"], out)
        assert scrub.find(out) == []


def test_stream_scrubbing_is_idempotent_and_changes_little_else(stream):
    changed_without_pii = 0
    for rec in stream:
        out = scrub.scrub(rec["text"])
        assert scrub.scrub(out) == out
        if not rec["pii"] and out != rec["text"]:
            changed_without_pii += 1
            # the one known over-scrub: artists who are people (public figures' names are names;
            # the name model recognises them beyond the gazetteer's four common-name artists)
            assert re.search(
                r"taylor swift|miles davis|norah jones|nina simone|burna boy|kendrick lamar|rosalia"
                r"|adele|bach",
                rec["text"],
                re.I,
            ), rec["text"]
    assert changed_without_pii < 0.03 * len(stream)  # about 2 %: 9 of the 14 artists


def test_scrub_is_deterministic_across_processes_and_hash_seeds(stream):
    here = hashlib.sha256("\n".join(scrub.scrub_batch([r["text"] for r in stream[:5000]])).encode()).hexdigest()
    code = (
        "import hashlib; from labs import streams; from lab_hardware.modelops import scrub; "
        f"t = [r['text'] for r in streams.voice_intents({STREAM_SEED}, 5000)]; "
        "print(hashlib.sha256('\\n'.join(scrub.scrub_batch(t)).encode()).hexdigest())"
    )
    for seed in ("0", "987"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=900
        )  # a bound, not a timing: Presidio's import is slow on a busy machine
        assert out.stdout.strip() == here


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "<",
        "<name",
        "name>",
        "@",
        "+",
        "(555)",
        "'s",
        "’s",
        "call",
        "at dot com",
        "x" * 5000,
        "Ünïcödé naïve café",
        "İstanbul",
        "call José Ñúñez",
        "e\u0301milie",
        "\u200bcall anna",
        "📞 call Anna 😊",
        "call\tAnna\nat 555-123-4567",
        "call anna" * 200,
    ],
)
def test_odd_inputs_do_not_crash_and_stay_idempotent(text):
    out = scrub.scrub(text)
    assert scrub.scrub(out) == out
    for kind, s, e in scrub.find(text):
        assert kind in scrub.KINDS and 0 <= s < e <= len(text)


def test_idempotent_on_random_splices_of_the_corpus():
    """Glued and shuffled fragments: the second pass must never find more than the first."""
    import random

    rng = random.Random(20261125)
    words = " ".join(c["text"] for c in CORPUS).split() + [
        "will",
        "may",
        "june",
        "grace",
        "and",
        ",",
        "call",
        "to",
        "send",
        "<name>",
        "<email>",
        "<phone>",
        "'s",
        "at",
        "on",
        "let",
        "know",
        "likes",
        "the",
        "rose",
        "white",
        "anna",
        "smith",
        "dot",
        "com",
        "(555)",
        "123",
        "4567",
        "+1",
        "+44",
        "-",
        ".",
        "555",
        "@",
        "+",
    ]
    for _ in range(4000):  # multi-pass scrubbing makes idempotence structural; this samples it
        text = rng.choice([" ", "", "-", ".", " . ", "@"]).join(rng.choice(words) for _ in range(rng.randint(1, 10)))
        if rng.random() < 0.3:
            text = text.upper()
        once = scrub.scrub(text)
        assert scrub.scrub(once) == once, text


def test_identifiers_a_program_made_are_not_pii_but_numbers_written_down_are():
    """Several of Presidio's id patterns have no word boundary, so a random hex id or digest
    held a valid PESEL now and then, and a uuid's groups read as a phone ("17678424-4288");
    the name model read half of them as names in a sentence ("capture 9f3ab2c1 stored").
    A number glued to letters or digits is part of a longer token, a uuid is a program's, and
    nobody's name is written with a digit."""
    from tests.machine_tokens import machine_tokens

    tokens = machine_tokens(20261204, 400)
    templates = ["session {} closed", "capture {} stored", "digest {} mismatch", "run {} completed"]
    bad = [
        (text, k)
        for i, t in enumerate(tokens)
        for text in [templates[i % len(templates)].format(t)]
        for k, _, _ in scrub.find(text)
        if k != "name" or i % 4 != 3  # base64 splits into letter runs ("AeK") a name model cannot tell
    ]
    assert bad == [], bad[:5]
    for text, kind in [
        ("my pesel is 34060925890", "id"),
        ("pesel:34060925890.", "id"),
        ("call +44 20 7946 0958 now", "phone"),
        ("IBAN DE89370400440532013000", "iban"),
        ("card 4111 1111 1111 1111", "card"),
        ("call Grace Okafor r2d2 now", "name"),
        ("remind Anna 2 times", "name"),
    ]:
        assert kind in {k for k, _, _ in scrub.find(text)}, text


def test_scrubbing_writes_nothing_to_a_process_log_at_info(caplog):
    """The lab's supervisor logs at INFO and scrubs every capture it stores: Presidio's
    per-call 'Fetching all recognizers' lines once made up 8,700 of its log's lines in one
    grading run, burying what the supervisor did."""
    import logging

    with caplog.at_level(logging.INFO):
        for text in ("call Maria Lopez at 415-555-0134", "mail bob@example.com", "set a timer for 5 minutes"):
            scrub.scrub(text)
    noisy = [r for r in caplog.records if r.name.startswith("presidio")]
    assert not noisy, f"{len(noisy)} Presidio records, e.g. {noisy[0].name}: {noisy[0].getMessage()}"
