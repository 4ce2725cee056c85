"""The scrubber's name model: a small linear token classifier, trained here, shipped as JSON.

Why a model of our own and not a packaged NER pipeline: the utterances a device sees are
short, mostly lower-case voice transcripts ("call grace okafor"), where the cased
newswire models on the registry (spaCy's small pipelines and their re-uploads) miss most
names and cost milliseconds per utterance; the multilingual ones do not install from
PyPI under their own names at all.  A logistic-regression token classifier over
word-shape, affix, character-trigram, script and context features recognises names it
has never seen (accented, Cyrillic, CJK, Polish, West African ...) from how they are
spelt and where they stand ("call X", "Dr. X", "X's list"), runs in tens of
microseconds in pure Python, and -- its weights being integers summed in a fixed order
-- decides identically on every machine, which replays and the byte-identical model
rebuild need.  ``scrub_ner_train.py`` builds ``scrub_ner.json`` from seeded Faker data
(many locales) and its own templates; the evaluation set in ``tests/`` is generated from
other templates with another seed and never trained or tuned on.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

MODEL_FILE = Path(__file__).with_name("scrub_ner.json")
VOCAB_FILE = Path(__file__).with_name("scrub_ner_vocab.txt.gz")
#: Placeholders the scrubber writes; a model never tags them and reads them as context.
PLACEHOLDER = r"<(?:name|email|phone|card|iban|id)>"
#: E-mail-like and dotted chunks ("x@y.io", "1.2.3", "www.example.com") and handles ("@livelab")
#: are one token each, not words:
#: the parts of an address are not a name's neighbours.
TOKEN = re.compile(PLACEHOLDER + r"|[\w.+-]*\w@[\w.-]*\w|@\w+|\w+(?:\.\w+)+|\w+(?:['\u2019]\w+)*|[^\w\s]")
_APOS = ("'s", "\u2019s")
#: Score (x100 logits) above which the model overrides the rules' veto on an ambiguous word
#: (set, like EXTEND, on the training generator's development split).
VETO_MARGIN = 150
#: Lower threshold for a word next to a name (see ``NameModel.spans``); set on the training
#: generator's development split (another seed), never on the evaluation set.
EXTEND = -250
#: Words that put a surname after them ("Dr. Baker", "Mrs Rice", "pani Nowak").
TITLES = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "miss",
        "mx",
        "dr",
        "doctor",
        "prof",
        "professor",
        "sir",
        "dame",
        "madam",
        "madame",
        "mme",
        "mlle",
        "monsieur",
        "herr",
        "frau",
        "señor",
        "señora",
        "senor",
        "senora",
        "sr",
        "sra",
        "srta",
        "signor",
        "signora",
        "pan",
        "pani",
        "gospodin",
        "coach",
        "officer",
        "captain",
        "capt",
        "rev",
        "reverend",
        "father",
        "sister",
        "nurse",
        "judge",
        "chief",
        "auntie",
        "aunt",
        "uncle",
        "cousin",
        "grandpa",
        "grandma",
    }
)


#: Titles that stand only before a name (a subset of TITLES: not "father", "sister", "chief" ...).
HONORIFICS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "mx",
        "dr",
        "prof",
        "professor",
        "sir",
        "dame",
        "madame",
        "mme",
        "mlle",
        "monsieur",
        "herr",
        "frau",
        "señor",
        "señora",
        "senor",
        "senora",
        "sr",
        "sra",
        "srta",
        "signor",
        "signora",
        "pan",
        "pani",
        "coach",
        "judge",
        "captain",
        "capt",
        "rev",
        "reverend",
    }
)


def fold(word: str) -> str:
    """Lower-case with accents removed (``Łukasz`` keeps its ł: NFKD has no decomposition)."""
    word = word.lower()
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def _script(word: str) -> str:
    for c in word:
        if c.isalpha():
            if c.isascii():
                return "lat"
            name = unicodedata.name(c, "")
            return name.split(" ", 1)[0].lower() if name else "other"
    return "none"


def _shape(tok: str) -> str:
    if tok.isupper():
        return "XX"
    if tok[:1].isupper():
        return "Xx" if tok[1:].islower() or len(tok) == 1 else "XxX"
    return "xx" if tok.islower() else "x0"


def split_possessive(low: str) -> tuple[str, int]:
    """(stem, length of a possessive 's)."""
    if len(low) > 2 and low.endswith(_APOS):
        return low[:-2], 2
    return low, 0


@lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Ordinary English words (feature ``voc``; a Latin-script word outside it gets ``oov``,
    which is most of what a name is: "nobuhle", "kowalczyk", "oyelaran")."""
    import gzip

    return frozenset(
        w for w in gzip.decompress(VOCAB_FILE.read_bytes()).decode("utf-8").splitlines() if w and not w.startswith("#")
    )


@lru_cache(maxsize=65536)
def word_features(tok: str, mixed: bool) -> tuple[str, ...]:
    """Features of a word on its own (cached: they do not depend on the sentence)."""
    low = tok.lower()
    stem, poss = split_possessive(low)
    f = fold(stem)
    feats = ["w=" + stem]
    if f != stem:
        feats += ["f=" + f, "acc"]
    sc = _script(stem)
    feats.append("sc=" + sc)
    if any(c.isdigit() for c in stem):
        feats.append("dig")
    feats.append(f"len={min(len(stem), 12)}")
    if poss:
        feats.append("poss")
    if "'" in stem or "\u2019" in stem:
        feats.append("apo")
    if mixed:
        feats.append("sh=" + _shape(tok))
    if sc == "lat" or sc == "latin":
        base = f.replace("'", "").replace("\u2019", "")
        feats.append("voc" if base in vocabulary() or (base.endswith("s") and base[:-1] in vocabulary()) else "oov")
        if len(f) >= 3:
            feats += ["p2=" + f[:2], "p3=" + f[:3], "s2=" + f[-2:], "s3=" + f[-3:]]
        if len(f) >= 5:
            feats += ["s4=" + f[-4:]]
        x = "^" + f + "$"
        feats += ["g=" + x[j : j + 3] for j in range(len(x) - 2)]
    else:
        feats.append("s1=" + f[-1:])
    return tuple(feats)


def tokens(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) for words, placeholders and punctuation marks."""
    return [(m.group(), m.start(), m.end()) for m in TOKEN.finditer(text)]


def is_word(tok: str) -> bool:
    """Tokens the model decides on: words with a letter (not numbers, marks or placeholders)."""
    return tok[0] != "<" and "@" not in tok and "." not in tok and any(c.isalpha() for c in tok)


def features(toks: list[str], i: int, mixed: bool, lows: list[str]) -> list[str]:
    """All features of word ``i``: its own and its neighbours' (two each side)."""
    feats = list(word_features(toks[i], mixed))
    n = len(toks)
    p1 = lows[i - 1] if i > 0 else "<s>"
    p2 = lows[i - 2] if i > 1 else "<s>"
    n1 = lows[i + 1] if i + 1 < n else "</s>"
    n2 = lows[i + 2] if i + 2 < n else "</s>"
    feats += [
        "p1=" + p1,
        "p2=" + p2,
        "n1=" + n1,
        "n2=" + n2,
        "p2p1=" + p2 + "|" + p1,
        "n1n2=" + n1 + "|" + n2,
        "p1n1=" + p1 + "|" + n1,
    ]
    if p1 in TITLES or (p1 == "." and p2 in TITLES):
        feats.append("title")
    if i == 0:
        feats.append("first")
    if mixed:
        if i > 0 and toks[i - 1][:1].isupper():
            feats.append("p1cap")
        if i + 1 < n and toks[i + 1][:1].isupper():
            feats.append("n1cap")
    feats += neighbour_kinds(p1, n1)
    return feats


@lru_cache(maxsize=65536)
def _kind(low: str) -> str:
    """What a neighbouring word looks like: an English word, a word outside the vocabulary
    (name-like), non-Latin script, or something else (punctuation, number, placeholder)."""
    if not any(c.isalpha() for c in low) or low[0] == "<" or "@" in low or "." in low:
        return ""
    if not low.isascii() and _script(low) not in ("lat", "latin"):
        return "nl"
    base = fold(split_possessive(low)[0]).replace("'", "").replace("\u2019", "")
    return "voc" if base in vocabulary() or (base.endswith("s") and base[:-1] in vocabulary()) else "oov"


def neighbour_kinds(p1: str, n1: str) -> list[str]:
    """Features of the neighbours' kinds: a first name stands before a surname the model has
    never seen ("blessing ojo"), and the other way round."""
    out = []
    k = _kind(p1) if p1 != "<s>" else ""
    if k:
        out.append("p1k=" + k)
    k = _kind(n1) if n1 != "</s>" else ""
    if k:
        out.append("n1k=" + k)
    return out


#: Words that are never names ("a @ b . com", "eight o'clock").
NEVER = frozenset({"com", "org", "net", "www", "http", "https", "html", "o'clock", "o\u2019clock"})
#: A Latin word of one or two letters ("ba 2490", "lh") needs this score (x100) to be a name.
SHORT_MARGIN = 100


def _code_before_number(text: str, end: int) -> bool:
    """A one- or two-letter word right before a number is a code ("flight ba 2490", "lh 2034")."""
    rest = text[end : end + 2]
    return rest[:1].isdigit() or (rest[:1] in " -" and rest[1:2].isdigit())


#: "don't", "we'll", "i'm": an English word with a contraction, never a name.
_CONTRACTION = re.compile(r"^\w+(?:n['\u2019]t|['\u2019](?:re|ll|ve|d|m))$")


def is_mixed_case(text: str) -> bool:
    """Capitals carry information only in text that is neither all lower nor all upper case
    nor Written Like A Title (most words capitalised)."""
    if text == text.lower() or text == text.upper():
        return False
    words = [w for w in text.split() if w[:1].isalpha()]
    return not (len(words) >= 3 and sum(w[0].isupper() for w in words) >= 0.7 * len(words))


class NameModel:
    """Integer weights per feature; a word is a name when its summed score is above 0."""

    def __init__(self, weights: dict[str, int], bias: int, meta: dict):
        self.weights = weights
        self.bias = bias
        self.meta = meta
        self._word_score: dict[tuple[str, bool], int] = {}

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> "NameModel":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls({k: int(v) for k, v in data["weights"].items()}, int(data["bias"]), data.get("meta", {}))

    def _wscore(self, tok: str, mixed: bool) -> int:
        key = (tok, mixed)
        s = self._word_score.get(key)
        if s is None:
            get = self.weights.get
            s = sum(get(f, 0) for f in word_features(tok, mixed))
            if len(self._word_score) < 200_000:
                self._word_score[key] = s
        return s

    def scores(self, text: str, with_context: bool = False) -> list[tuple]:
        """(start, end, score) of every word token (placeholders and punctuation excluded);
        with the two words before it when ``with_context``."""
        toks_pos = tokens(text)
        toks = [t for t, _, _ in toks_pos]
        lows = [t.lower() for t in toks]
        mixed = is_mixed_case(text)
        get = self.weights.get
        out = []
        n = len(toks)
        for i, (tok, s, e) in enumerate(toks_pos):
            if not is_word(tok) or any(c.isdigit() for c in tok):
                # nobody's name is written with a digit, and an unknown word with one is most
                # often a program's: "sha256", "9f3ab2c1" in "capture 9f3ab2c1 stored"
                continue
            score = self.bias + self._wscore(tok, mixed)
            p1 = lows[i - 1] if i > 0 else "<s>"
            p2 = lows[i - 2] if i > 1 else "<s>"
            n1 = lows[i + 1] if i + 1 < n else "</s>"
            n2 = lows[i + 2] if i + 2 < n else "</s>"
            ctx = [
                "p1=" + p1,
                "p2=" + p2,
                "n1=" + n1,
                "n2=" + n2,
                "p2p1=" + p2 + "|" + p1,
                "n1n2=" + n1 + "|" + n2,
                "p1n1=" + p1 + "|" + n1,
            ]
            if p1 in TITLES or (p1 == "." and p2 in TITLES):
                ctx.append("title")
            if i == 0:
                ctx.append("first")
            if mixed:
                if i > 0 and toks[i - 1][:1].isupper():
                    ctx.append("p1cap")
                if i + 1 < n and toks[i + 1][:1].isupper():
                    ctx.append("n1cap")
            ctx += neighbour_kinds(p1, n1)
            cscore = 0
            for f in ctx:
                cscore += get(f, 0)
            score += cscore
            out.append((s, e, score, p1, p2, cscore) if with_context else (s, e, score))
        return out

    def spans(self, text: str, veto: frozenset[str] = frozenset()) -> list[tuple[int, int]]:
        """Name spans: adjacent name words joined ("Grace Okafor", "Wieloch-Bolnbach"),
        a possessive ``'s`` left outside.  A word in ``veto`` (names that are also ordinary
        words, which the hand-written rules decide by context) is left to the rules unless a
        title stands before it ("Dr. Rice")."""
        spans: list[tuple[int, int]] = []
        poss_open = False
        scored = self.scores(text, with_context=True)
        mixed = is_mixed_case(text)
        # Hysteresis: a word above 0 is a name; a word next to a name (one space or hyphen)
        # is part of it when its score is above EXTEND (the English-word half of "blessing ojo").
        # A word right after an honorific ("Judge Knight", "coach waters") is seeded the same way.
        keep = [
            sc > 0 or (sc > EXTEND and (p1 in HONORIFICS or p1 == "." and p2 in HONORIFICS))
            for _, _, sc, p1, p2, _ in scored
        ]
        changed = True
        while changed:
            changed = False
            for j, (s, e, sc, _, _, _) in enumerate(scored):
                if keep[j] or sc <= EXTEND:
                    continue
                # leftwards any word (a first name that is also a word: "blessing ojo"); rightwards
                # only a word outside the English vocabulary or capitalised in mixed-case text
                # (a verb after a name is not a surname: "ojo wants pizza")
                word = text[s:e]
                right_ok = _kind(word.lower()) != "voc" or (mixed and word[:1].isupper())
                for k in (j - 1, j + 1) if right_ok else (j + 1,):
                    if 0 <= k < len(scored) and keep[k]:
                        a, b = (scored[k][1], s) if k < j else (e, scored[k][0])
                        if text[a:b] in (" ", "-"):
                            keep[j] = changed = True
                            break
        # Titles are not part of a name; a vetoed word stays only next to a name that is not.
        status = []  # 0 not a name, 1 name, 2 vetoed
        for j, (s, e, score, p1, p2, cscore) in enumerate(scored):
            stem = split_possessive(text[s:e].lower())[0]
            if (
                not keep[j]
                or stem in TITLES
                or stem in NEVER
                or _CONTRACTION.match(stem)
                or (len(stem) <= 2 and stem.isascii() and (score < SHORT_MARGIN or _code_before_number(text, e)))
            ):
                status.append(0)
            elif (
                veto
                and (score < VETO_MARGIN or cscore < 0)
                and fold(stem) in veto
                and not (p1 in TITLES or (p1 == "." and p2 in TITLES))
            ):
                status.append(2)  # the word alone does not decide: its context has to agree
            else:
                status.append(1)
        for j, (s, e, _score, _p1, _p2, _) in enumerate(scored):
            if status[j] == 2 and not any(
                0 <= k < len(scored)
                and status[k] == 1
                and text[min(e, scored[k][1]) : max(s, scored[k][0])] in (" ", "-")
                for k in (j - 1, j + 1)
            ):
                continue
            if status[j] == 0:
                continue
            _, poss = split_possessive(text[s:e].lower())
            e2 = e - poss
            if spans and not poss_open and text[spans[-1][1] : s] in (" ", "-", "'", "\u2019"):
                spans[-1] = (spans[-1][0], e2)
            else:
                spans.append((s, e2))
            poss_open = bool(poss)
        return spans


@lru_cache(maxsize=1)
def model() -> NameModel:
    """The shipped model (loaded once per process, from the package: no download)."""
    return NameModel.load()
