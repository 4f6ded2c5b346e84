"""Text corpora for calibration and perplexity: gensim's Wikipedia sample and local text files.

Every reader returns a list of documents (plain strings) in a deterministic order.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import os
import re
from fractions import Fraction
from pathlib import Path

from ecoflap.core.cache import cache_dir
from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import write_json

WIKIPEDIA_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_WORDS = 200
#: paragraphs shorter than this (headings, table cells, list items) are dropped
MIN_PARAGRAPH_WORDS = 10
CACHE_VERSION = 3
CORPUS_CHOICES = (
    "'wikipedia' (the default) or a path to a .txt file (documents separated by blank lines, "
    "or the WikiText raw layout with ' = Title = ' headings), a .jsonl file with a \"text\" "
    "field, or a folder of .txt files (one document each)"
)

_BOLD_ITALIC = re.compile(r"'{2,}")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_EMPTY_PARENS = re.compile(r" ?\([\s,;:]*\)")
_PARENS_OPEN = re.compile(r"\([\s,;:]+")
_PARENS_CLOSE = re.compile(r"[\s,;:]+\)")
_HEADING = re.compile(r"^(={2,6})\s*(.*?)\s*\1$")
_WIKITEXT_TITLE = re.compile(r"^ ?= (?!=).*?(?<!=) =\s*$")  # ' = Title = ', not ' = = Section = = '


# --------------------------------------------------------------------------- Wikipedia sample


def wikipedia_dump_path() -> Path:
    """The real (shortened) English Wikipedia dump that gensim ships as test data."""
    spec = importlib.util.find_spec("gensim")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise EcoflapError("the Wikipedia corpus needs gensim: pip install gensim==4.4.0")
    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data" / WIKIPEDIA_FILE
    if not path.is_file():
        raise EcoflapError(f"gensim's Wikipedia test file is missing: {path}")
    return path


def clean_wiki_text(markup: str) -> str:
    """Plain text of one article's wiki markup: gensim's filter_wiki, then tidy whitespace."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = _BOLD_ITALIC.sub("", filter_wiki(markup))
    lines = [_tidy_line(line) for line in text.split("\n")]
    return "\n\n".join(line for line in lines if _is_prose(line))


def _is_prose(line: str) -> bool:
    """A paragraph of running text, not a heading, table cell or list item (those skew word perplexity)."""
    return len(line.split()) >= MIN_PARAGRAPH_WORDS and not line.startswith(("=", "*", "#", "|", "!"))


def _tidy_line(line: str) -> str:
    """One line with single spaces, no emptied '( ; , )' left by filter_wiki, '== Title ==' headings."""
    line = _SPACES.sub(" ", line).strip()
    line = _PARENS_CLOSE.sub(")", _PARENS_OPEN.sub("(", _EMPTY_PARENS.sub("", line)))
    heading = _HEADING.match(line)
    if heading:
        marks, title = heading.groups()
        return f"{marks} {title} {marks}" if title else ""
    return line


def parse_wikipedia(path: Path, min_words: int = MIN_WORDS) -> list[str]:
    """Articles of a Wikipedia XML dump over `min_words` words, redirects skipped, in file order."""
    from gensim.corpora.wikicorpus import extract_pages

    articles = []
    with bz2.open(path, "rb") as dump:
        for _title, markup, _page_id in extract_pages(dump):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            text = clean_wiki_text(markup)
            if len(text.split()) > min_words:
                articles.append(text)
    return articles


def wikipedia_articles() -> list[str]:
    """gensim's real Wikipedia sample as plain-text articles (parsed once, then cached as JSON)."""
    path = wikipedia_dump_path()
    cache = cache_dir() / "corpora" / f"wikipedia-{path.stat().st_size}-v{CACHE_VERSION}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    articles = parse_wikipedia(path)
    try:
        write_json(cache, articles)
    except EcoflapError:
        pass  # an unwritable cache only costs time
    return articles


# --------------------------------------------------------------------------- split


def split_corpus(articles: list[str], heldout_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Split into (calibration, held-out): article i is held out when (i+1)*f crosses an integer.

    With f = 0.1 that is every 10th article (indices 9, 19, 29, ...): floor(n*f) held out,
    spread evenly, at least one when n >= 2. Both lists keep the input order and never overlap.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise EcoflapError(f"heldout_fraction must lie strictly between 0 and 1, not {heldout_fraction}")
    fraction = Fraction(heldout_fraction).limit_denominator(10_000)
    heldout = {i for i in range(len(articles)) if (i + 1) * fraction // 1 > i * fraction // 1}
    if not heldout and len(articles) >= 2:
        heldout = {len(articles) - 1}
    calibration = [a for i, a in enumerate(articles) if i not in heldout]
    return calibration, [a for i, a in enumerate(articles) if i in heldout]


# --------------------------------------------------------------------------- local files


def read_text_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Documents of a local corpus: a .txt file, a .jsonl file ("text" field) or a folder of .txt."""
    corpus = Path(path).expanduser()
    if not corpus.exists():
        raise EcoflapError(f"corpus not found: {corpus} (use {CORPUS_CHOICES})")
    if corpus.is_dir():
        documents = _read_txt_folder(corpus)
    elif corpus.suffix.lower() == ".txt":
        documents = split_text_documents(_read(corpus))
    elif corpus.suffix.lower() == ".jsonl":
        documents = _read_jsonl(corpus)
    else:
        raise EcoflapError(
            f"unknown corpus file type '{corpus.suffix}' ({corpus}): "
            "use a .txt file, a .jsonl file or a folder of .txt files"
        )
    if not documents:
        raise EcoflapError(f"corpus {corpus} holds no text")
    return documents


def _read(path: Path) -> str:
    """A text file's contents as UTF-8, with a clear error for undecodable bytes."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise EcoflapError(f"corpus file {path} is not UTF-8 text: {err}") from err


def split_text_documents(text: str) -> list[str]:
    """Documents of a .txt file: WikiText raw articles if ' = Title = ' lines exist, else blank-line blocks."""
    lines = text.replace("\r\n", "\n").split("\n")
    if any(_WIKITEXT_TITLE.match(line) for line in lines):
        return _split_wikitext(lines)
    blocks = re.split(r"\n\s*\n", "\n".join(lines))
    return [block.strip() for block in blocks if block.strip()]


def _split_wikitext(lines: list[str]) -> list[str]:
    """WikiText raw layout: each ' = Title = ' line starts an article (heading kept, text as is)."""
    articles: list[list[str]] = []
    for line in lines:
        if _WIKITEXT_TITLE.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    documents = ["\n".join(article).strip() for article in articles]
    return [doc for doc in documents if doc]


def _read_jsonl(path: Path) -> list[str]:
    """The non-empty "text" fields of a JSON-lines file, in file order."""
    documents = []
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise EcoflapError(f"{path}, line {number}: not valid JSON ({err})") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise EcoflapError(f'{path}, line {number}: expected an object with a "text" string')
        if record["text"].strip():
            documents.append(record["text"].strip())
    return documents


def _read_txt_folder(folder: Path) -> list[str]:
    """One document per .txt file of a folder (searched recursively, sorted by path)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".txt")
    if not files:
        raise EcoflapError(f"corpus folder {folder} holds no .txt files")
    return [text for text in (_read(p).strip() for p in files) if text]


#: calibration sources known by name (easy-vqa: image-caption pairs for image-text models)
NAMED_CORPORA = ("wikipedia", "easy-vqa")
#: how much of a corpus file ``check_corpus`` reads to tell text from binary
CHECKED_BYTES = 1 << 16


def check_corpus(name_or_path: str) -> None:
    """A corpus name, or a corpus file or folder that exists and holds text; reads at most 64 KiB per file."""
    if name_or_path in NAMED_CORPORA:
        return
    path = Path(name_or_path).expanduser()
    if not _looks_like_path(name_or_path):
        raise EcoflapError(f"unknown corpus '{name_or_path}': use {CORPUS_CHOICES}")
    if not path.exists():
        raise EcoflapError(f"corpus not found: {path} (use {CORPUS_CHOICES})")
    if path.is_dir():
        if not any(p.suffix.lower() == ".txt" and p.is_file() for p in path.rglob("*")):
            raise EcoflapError(f"corpus folder {path} holds no .txt files")
        return
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise EcoflapError(f"unknown corpus file type '{path.suffix}' ({path}): use a .txt or .jsonl file, or a folder")
    _check_text_head(path)


def _check_text_head(path: Path) -> None:
    import codecs

    try:
        with path.open("rb") as handle:
            head = handle.read(CHECKED_BYTES)
    except OSError as exc:
        raise EcoflapError(f"cannot read the corpus file {path}: {exc.strerror or exc}") from None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < CHECKED_BYTES)
    except UnicodeDecodeError as exc:
        raise EcoflapError(
            f"corpus file {path} is not UTF-8 text (byte 0x{head[exc.start]:02x} at offset {exc.start})"
        ) from None
    if "\x00" in text:
        raise EcoflapError(f"corpus file {path} is not text (it holds NUL bytes)")
    if not text.strip():
        raise EcoflapError(f"corpus {path} holds no text")


def _looks_like_path(name_or_path: str) -> bool:
    path = Path(name_or_path)
    return "/" in name_or_path or os.sep in name_or_path or bool(path.suffix) or path.exists()


def load_corpus(name_or_path: str = "wikipedia") -> list[str]:
    """A corpus by name ('wikipedia') or by path (see read_text_corpus)."""
    if name_or_path == "wikipedia":
        return wikipedia_articles()
    if _looks_like_path(name_or_path):
        return read_text_corpus(name_or_path)
    raise EcoflapError(f"unknown corpus '{name_or_path}': use {CORPUS_CHOICES}")
