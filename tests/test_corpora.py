"""Corpus readers: gensim's real Wikipedia sample, the calibration / held-out split, local files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecoflap.core.datasets import corpora
from ecoflap.core.datasets.corpora import load_corpus, read_text_corpus, split_corpus, wikipedia_articles
from ecoflap.core.errors import EcoflapError

WIKITEXT_LINES = [  # the WikiText-2 raw layout: every line ends with " \n"
    "",
    " = Valkyria Chronicles III =",
    "",
    " Senjō no Valkyria 3 is a tactical role @-@ playing video game .",
    "",
    " = = Gameplay = =",
    "",
    " As with previous games , the squad fights in turns .",
    "",
    " = Tower Building of the Little Rock Arsenal =",
    "",
    " The Tower Building is a building in Little Rock , Arkansas .",
]
WIKITEXT = "".join(line + " \n" for line in WIKITEXT_LINES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ECOFLAP_CACHE in a temporary folder for this module."""
    folder = tmp_path_factory.mktemp("ecoflap-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ECOFLAP_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def articles(cache: Path) -> list[str]:
    """The Wikipedia articles, parsed once (the first call fills the cache)."""
    return wikipedia_articles()


def test_wikipedia_articles_are_clean_plain_text(articles: list[str]) -> None:
    assert len(articles) >= 90  # 94 articles keep over 200 words of prose
    assert not any(a.lstrip().lower().startswith("#redirect") for a in articles)
    paragraphs = [p for a in articles for p in a.split("\n\n")]
    assert all(len(p.split()) >= 10 and not p.startswith(("=", "*")) for p in paragraphs)  # prose only
    assert not any("'''" in a for a in articles)
    assert all(len(a.split()) > 200 for a in articles)
    assert all(a == a.strip() and "\n\n\n" not in a and "  " not in a for a in articles)
    assert articles[0].startswith("Anarchism is a political philosophy")
    assert sum("\n\n" in a for a in articles) > 90  # paragraph breaks kept


def test_wikipedia_articles_come_from_the_cache_in_the_same_order(
    articles: list[str], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert list(cache.rglob("wikipedia-*.json"))

    def no_parse(*_args: object) -> list[str]:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(corpora, "parse_wikipedia", no_parse)
    assert wikipedia_articles() == articles
    assert load_corpus("wikipedia") == articles


def test_split_holds_out_every_tenth_article(articles: list[str]) -> None:
    calibration, heldout = split_corpus(articles)
    assert heldout == articles[9::10]
    assert len(heldout) == len(articles) // 10
    assert not set(calibration) & set(heldout)
    assert sorted(calibration + heldout) == sorted(articles)
    assert split_corpus(articles) == (calibration, heldout)


@pytest.mark.parametrize(("n", "fraction", "expected"), [(20, 0.25, 5), (7, 0.5, 3), (3, 0.1, 1)])
def test_split_other_fractions(n: int, fraction: float, expected: int) -> None:
    docs = [f"document {i}" for i in range(n)]
    calibration, heldout = split_corpus(docs, fraction)
    assert len(heldout) == expected and len(calibration) == n - expected
    assert not set(calibration) & set(heldout)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_a_bad_fraction(fraction: float) -> None:
    with pytest.raises(EcoflapError, match="heldout_fraction"):
        split_corpus(["a", "b"], fraction)


def test_txt_documents_are_separated_by_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "docs.txt"
    path.write_text("First document,\nsecond line.\n\n\n  Second document.  \n \nThird.\n")
    assert read_text_corpus(path) == ["First document,\nsecond line.", "Second document.", "Third."]


@pytest.mark.parametrize("text", [WIKITEXT, "\n".join(WIKITEXT_LINES)])
def test_txt_in_the_wikitext_layout_splits_at_titles(tmp_path: Path, text: str) -> None:
    path = tmp_path / "wiki.test.raw.txt"
    path.write_text(text)
    documents = read_text_corpus(path)
    assert len(documents) == 2
    assert documents[0].startswith("= Valkyria Chronicles III =")
    assert "= = Gameplay = =" in documents[0]  # a section does not start an article
    assert documents[1].startswith("= Tower Building of the Little Rock Arsenal =")


def test_jsonl_reads_the_text_field(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": "one", "id": 1}), "", json.dumps({"text": "  two  "})]
    path.write_text("\n".join(lines) + "\n")
    assert read_text_corpus(path) == ["one", "two"]
    assert load_corpus(str(path)) == ["one", "two"]


def test_folder_gives_one_document_per_txt_file(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("Second file.\n\nStill the second.\n")
    (tmp_path / "a.txt").write_text("First file.\n")
    (tmp_path / "notes.md").write_text("ignored")
    assert read_text_corpus(tmp_path) == ["First file.", "Second file.\n\nStill the second."]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "corpus not found"),
        ("data.csv", "a,b\n", "unknown corpus file type '.csv'"),
        ("empty.txt", " \n\n \n", "holds no text"),
        ("empty.jsonl", "\n", "holds no text"),
        ("bad.jsonl", '{"text": "ok"}\nnot json\n', "line 2: not valid JSON"),
        ("field.jsonl", '{"body": "no text field"}\n', 'line 1: expected an object with a "text"'),
    ],
)
def test_corpus_errors_say_what_is_wrong(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(EcoflapError, match=message) as error:
        read_text_corpus(path)
    assert "\n" not in str(error.value)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EcoflapError, match="holds no .txt files"):
        read_text_corpus(tmp_path)


def test_unknown_corpus_name_lists_the_choices() -> None:
    with pytest.raises(EcoflapError, match="unknown corpus 'wikitext'.*'wikipedia'"):
        load_corpus("wikitext")
