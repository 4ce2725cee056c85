"""The scenario's stream ships already scrubbed, and devices trust it only when it provably pairs
with their stream and with this scrubber (``scrub.read_scrubbed_stream``)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import time

import pytest

from lab_hardware.modelops import replay, scrub
from labs import scenarios, streams

SC = scenarios.load("voice-intents")


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    path = streams.write_jsonl(SC.stream(), tmp_path_factory.mktemp("s") / "stream.jsonl")
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    return hashlib.sha256(path.read_bytes()).hexdigest(), texts


def test_the_shipped_scrubbed_stream_is_current(stream):
    """After a change to the scrubber (code, data, library versions) or to the stream, rebuild it:
    python -m labs.scenarios scrub-stream voice-intents."""
    sha, texts = stream
    got, why = scrub.read_scrubbed_stream(SC.scrubbed_stream_path, sha, len(texts))
    assert got is not None, f"{why}: run python -m labs.scenarios scrub-stream voice-intents"


def test_the_shipped_scrubbed_stream_is_what_the_scrubber_says(stream):
    sha, texts = stream
    got, _ = scrub.read_scrubbed_stream(SC.scrubbed_stream_path, sha, len(texts))
    assert got is not None
    changed = [i for i, (a, b) in enumerate(zip(texts, got)) if a != b]
    assert len(changed) > 1000  # the stream carries synthetic PII (pii_fraction 0.3)
    rng = random.Random(7)
    sample = rng.sample(changed, 300) + rng.sample(range(len(texts)), 300)
    assert [got[i] for i in sample] == [scrub.scrub(texts[i]) for i in sample]


def _write(tmp_path, header_change=None, texts=("hello", "call <name>")):
    path = tmp_path / "s.jsonl"
    scrub.write_scrubbed_stream(list(texts), "abc", path)
    if header_change:
        lines = path.read_text().splitlines()
        h = json.loads(lines[0])
        h.update(header_change)
        path.write_text("\n".join([json.dumps(h), *lines[1:]]) + "\n")
    return path


@pytest.mark.parametrize(
    "change,count,sha,reason",
    [
        ({"scrubber": "0" * 64}, 2, "abc", "made by another scrubber"),
        (None, 2, "def", "made for another stream"),
        (None, 3, "abc", "2 texts for a stream of 3"),
        ({"schema": "other"}, 2, "abc", "not a livelab.scrubbed-stream/v1 file"),
    ],
)
def test_a_scrubbed_stream_that_does_not_pair_is_refused_with_its_reason(tmp_path, change, count, sha, reason):
    texts, why = scrub.read_scrubbed_stream(_write(tmp_path, change), sha, count)
    assert texts is None and reason in why and "\n" not in why


def test_a_damaged_scrubbed_stream_is_refused(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    scrub.write_scrubbed_stream(["a", "b"], "abc", path)
    path.write_bytes(path.read_bytes()[:-9])
    texts, why = scrub.read_scrubbed_stream(path, "abc", 2)
    assert texts is None and "unreadable" in why
    assert scrub.read_scrubbed_stream(tmp_path / "none.gz", "abc", 2)[0] is None


def test_the_written_file_scrubs_and_is_reproducible(tmp_path):
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    for p in (a, b):
        scrub.write_scrubbed_stream(["call Grace Okafor at grace@example.com"], "abc", p)
    assert a.read_bytes() == b.read_bytes()
    body = gzip.decompress(a.read_bytes()).decode()
    assert "Grace" not in body and "grace@" not in body
    assert scrub.read_scrubbed_stream(a, "abc", 1)[0] == [scrub.scrub("call Grace Okafor at grace@example.com")]


def test_materialize_hands_devices_the_scrubbed_stream(tmp_path):
    cfg = SC.materialize(tmp_path / "lab")
    sha = hashlib.sha256(open(cfg["stream"], "rb").read()).hexdigest()
    texts, why = scrub.read_scrubbed_stream(cfg["scrubbed_stream"], sha, SC.stream_length)
    assert texts is not None, why


def test_a_device_handed_a_stale_scrubbed_stream_scrubs_live(tmp_path, mosquitto_available):
    """A lab whose scrubbed stream was tampered with: its devices say why, scrub live, and
    decide on exactly what the scrubber says."""
    from lab_hardware.runtime import lab
    from labs import Lab

    home = tmp_path / "lab"
    cfg = SC.materialize(home / "scenario")
    tampered = gzip.decompress(open(cfg["scrubbed_stream"], "rb").read()).decode().splitlines()
    tampered[1:] = [json.dumps("call Grace Okafor")] * (len(tampered) - 1)  # PII back in, header intact
    header = json.loads(tampered[0])
    header["scrubber"] = "0" * 64
    tampered[0] = json.dumps(header)
    with open(cfg["scrubbed_stream"], "wb") as fh:
        fh.write(gzip.compress(("\n".join(tampered) + "\n").encode()))
    lab.up(home, scenario=cfg, devices=1, device_options={"window_seconds": 0.3})
    try:
        with Lab.connect(home=home) as sdk:
            sdk.grant_consent("dev-0", "replay-capture")
            cid = sdk.capture("dev-0", 20, timeout=120)
            sdk.revoke_consent("dev-0", "replay-capture")
        deadline = time.monotonic() + 120
        while not [c for c in replay.list_captures(home) if c["capture_id"] == cid] and time.monotonic() < deadline:
            time.sleep(0.1)
        (cap,) = [c for c in replay.list_captures(home) if c["capture_id"] == cid]
        texts = [json.loads(line)["text"] for line in open(cap["path"], encoding="utf-8")]
        assert len(texts) >= 20 and "Grace Okafor" not in " ".join(texts)
        log = (home / "logs" / "device-default-dev-0.log").read_text()
        assert "scrubbing live" in log and "made by another scrubber" in log
    finally:
        lab.down(home)
