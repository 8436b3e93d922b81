"""zerank.serving.search's storage: passage cutting (passages), metadata filters (filters), the SQLite FTS5
store (sqlite_store), and its transactions (injected failures and a process killed in the middle of an add)."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from zerank.serving.search.filters import check_metadata, compile_filter
from zerank.serving.search.passages import cut_passages
from zerank.serving.search.sqlite_store import SQLiteStore, match_expression
from zerank.serving.search.store import (
    LONG_SNIPPET_CHARS,
    SHORT_SNIPPET_CHARS,
    UNITS,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StoreError,
)

SENTENCES = [
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "Gustave Eiffel's company designed and built it.",
    "It is 330 metres tall and was the tallest structure in the world until 1930!",
    "Is it still painted every seven years?",
    "Yes: about 60 tonnes of paint are used each time.",
]

CORPUS = {
    "eiffel.txt": ("\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(5)) * 3,
                   {"lang": "en", "list:tags": ["paris", "tower"]}),
    "louvre.txt": ("The Louvre is the world's most visited museum and holds the Mona Lisa.",
                   {"lang": "en", "list:tags": ["paris", "museum"]}),
    "berlin.txt": ("Berlin is the capital of Germany; its TV tower stands on Alexanderplatz.",
                   {"lang": "de", "year": "1969"}),
    "rome.txt": ("Rome has the Colosseum, an amphitheatre completed in 80 AD.", {"lang": "it", "year": "0080"}),
    "kyoto.txt": ("Kyoto has many temples and gardens.", {}),
    "sydney.txt": ("The Sydney Opera House opened in 1973 on Bennelong Point.", {"lang": "en", "year": "1973"}),
}


def travel_store(folder) -> SQLiteStore:
    store = SQLiteStore(folder / "data" / "search.sqlite3")
    store.add_collection("travel")
    for path, (text, metadata) in CORPUS.items():
        store.add_document("travel", path, [text], metadata=metadata)
    return store


@pytest.fixture
def store(tmp_path) -> SQLiteStore:
    return travel_store(tmp_path)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> SQLiteStore:
    """For tests that only read."""
    return travel_store(tmp_path_factory.mktemp("shared"))


def check_integrity(path) -> dict[str, int]:
    """FTS5's own integrity check on every index, and the passages and the indexes agreeing row for row."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        counts = {}
        virtual = "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'"
        for (table,) in conn.execute(virtual):
            conn.execute(f"INSERT INTO {table} ({table}) VALUES ('integrity-check')")
            collection_id, unit = int(table.split("_")[1]), table.split("_", 2)[2]
            indexed = {row[0] for row in conn.execute(f"SELECT rowid FROM {table}")}
            stored = {row[0] for row in conn.execute(
                "SELECT p.id FROM passages AS p JOIN documents AS d ON d.id = p.document_id "
                "WHERE d.collection_id = ? AND p.unit = ?", (collection_id, unit))}
            assert indexed == stored, table
            counts[table] = len(indexed)
        orphans = conn.execute("SELECT count(*) FROM passages WHERE document_id NOT IN (SELECT id FROM documents)")
        assert orphans.fetchone()[0] == 0
        return counts
    finally:
        conn.close()


# --- passages ---


@pytest.mark.parametrize("max_chars", [SHORT_SNIPPET_CHARS, LONG_SNIPPET_CHARS, 37])
def test_passages_cover_the_text_in_order_within_the_limit(max_chars):
    text = CORPUS["eiffel.txt"][0] + " " + "x" * (max_chars * 2 + 5) + "  tail  "
    spans = cut_passages(text, max_chars)
    assert spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
    for (start, end), (next_start, _) in itertools.pairwise(spans):
        assert end <= next_start and not text[end:next_start].strip()  # only whitespace is left out
    for start, end in spans:
        assert 0 < end - start <= max_chars
        assert not text[start].isspace() and not text[end - 1].isspace()
    assert all(next_start - start >= max_chars // 2 for (start, _), (next_start, _) in itertools.pairwise(spans))


def test_passages_prefer_paragraphs_then_sentences_then_words():
    paragraph = "Aaaa bbbb cccc dddd.\n\nEeee ffff gggg hhhh iiii. Jjjj kkkk llll"
    assert paragraph[slice(*cut_passages(paragraph, 40)[0])] == "Aaaa bbbb cccc dddd."
    sentences = "Aaaa bbbb cccc dddd. Eeee ffff gggg hhhh iiii jjjj. Kkkk llll"
    assert sentences[slice(*cut_passages(sentences, 60)[0])] == "Aaaa bbbb cccc dddd. Eeee ffff gggg hhhh iiii jjjj."
    assert [sentences[a:b] for a, b in cut_passages(sentences, 12)][:2] == ["Aaaa bbbb", "cccc dddd."]
    assert cut_passages("abcdefghij", 4) == [(0, 4), (4, 8), (8, 10)]  # no break: hard cuts
    assert cut_passages(" \n ", 4) == []


def test_passages_stay_inside_their_page(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    store.add_collection("c")
    pages = ["first page about otters " * 20, "", "second page about beavers " * 20]
    store.add_document("c", "book", pages, content_type="text-pages")
    content = store.document("c", "book", include_content=True).content
    assert content == "\n".join(pages)
    hits = store.search("c", "beavers", 50, "short_snippet")
    assert hits and all(hit.page_index == 2 and content.index(pages[2]) <= hit.start for hit in hits)
    assert all(content[hit.start : hit.end] == hit.text for hit in hits)
    assert store.page("c", "book", 2, include_content=True).content == pages[2]
    assert store.page("c", "book", 1, include_content=True).content == ""
    with pytest.raises(NotFoundError, match="3 page"):
        store.page("c", "book", 3)
    assert sorted(h.page_index for h in store.search("c", "otters beavers", 5, "page")) == [0, 2]  # no empty page


# --- metadata and filters ---


@pytest.mark.parametrize(("metadata_filter", "expected"), [
    ({"lang": {"$eq": "en"}}, {"eiffel.txt", "louvre.txt", "sydney.txt"}),
    ({"lang": {"$ne": "en"}}, {"berlin.txt", "rome.txt", "kyoto.txt"}),  # missing is null: $ne is true
    ({"year": {"$gte": "1969", "$lt": "1973"}}, {"berlin.txt"}),
    ({"year": {"$lte": "1969"}}, {"berlin.txt", "rome.txt"}),
    ({"year": {"$gt": "0000"}}, {"berlin.txt", "rome.txt", "sydney.txt"}),  # missing: comparisons are false
    ({"lang": {"$in": ["de", "it"]}}, {"berlin.txt", "rome.txt"}),
    ({"lang": {"$nin": ["en"]}}, {"berlin.txt", "rome.txt", "kyoto.txt"}),
    ({"list:tags": {"$in": ["museum", "beach"]}}, {"louvre.txt"}),
    ({"list:tags": {"$nin": ["tower"]}}, {"louvre.txt", "berlin.txt", "rome.txt", "kyoto.txt", "sydney.txt"}),
    ({"$or": [{"lang": {"$eq": "it"}}, {"list:tags": {"$in": ["tower"]}}]}, {"rome.txt", "eiffel.txt"}),
    ({"$and": [{"lang": {"$eq": "en"}}, {"list:tags": {"$in": ["paris"]}}], "year": {"$ne": "x"}},
     {"eiffel.txt", "louvre.txt"}),
])
def test_metadata_filters(shared_store, metadata_filter, expected):
    listed = {hit.path for hit in shared_store.search("travel", None, 100, "document", metadata_filter)}
    assert listed == expected
    # the same filter on a ranked search: every hit passes it
    ranked = shared_store.search("travel", "the tower museum temples opera", 100, "short_snippet", metadata_filter)
    assert {hit.path for hit in ranked} <= expected


@pytest.mark.parametrize(("metadata_filter", "message"), [
    ({"lang": "en"}, "object of operators"),
    ({"lang": {"$regex": "e."}}, "Unknown filter operator '\\$regex'"),
    ({"list:tags": {"$eq": "paris"}}, "only \\$in and \\$nin"),
    ({"lang": {"$in": "en"}}, "list of strings"),
    ({"year": {"$gt": 1969}}, "takes a string"),
    ({"$or": {}}, "non-empty list"),
    ({"$not": [{}]}, "Unknown filter operator '\\$not'"),
    ({"bad name": {"$eq": "x"}}, "letters, digits"),
])
def test_bad_filters_are_named(metadata_filter, message):
    with pytest.raises(InvalidRequestError, match=message):
        compile_filter(metadata_filter)


@pytest.mark.parametrize(("metadata", "message"), [
    ({"tags": ["a"]}, "must be a string"),
    ({"list:tags": "a"}, "list of strings"),
    ({"a b": "x"}, "letters, digits"),
    ({"big": "x" * 70000}, "bytes of JSON"),
])
def test_bad_metadata_is_named(metadata, message):
    with pytest.raises(InvalidRequestError, match=message):
        check_metadata(metadata)


# --- the store ---


def test_collections(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    assert not (tmp_path / "s.db").exists()  # nothing written before the first call
    assert store.collection_names() == []
    store.add_collection("b")
    store.add_collection("a")
    with pytest.raises(ConflictError, match="already exists"):
        store.add_collection("a")
    with pytest.raises(InvalidRequestError):
        store.add_collection("x" * 1025)
    assert store.collection_names() == ["a", "b"]
    store.add_document("a", "doc", ["hello"])
    store.delete_collection("a")
    assert store.collection_names() == ["b"]
    with pytest.raises(NotFoundError, match="'a' does not exist"):
        store.delete_collection("a")
    with pytest.raises(NotFoundError):
        store.add_document("a", "doc", ["hello"])
    counts = check_integrity(tmp_path / "s.db")
    assert len(counts) == len(UNITS)  # the deleted collection's indexes are gone


def test_documents_add_get_list_update_delete(store):
    info = store.document("travel", "louvre.txt", include_content=True)
    assert info.content == CORPUS["louvre.txt"][0] and info.size == len(info.content.encode())
    assert info.metadata == CORPUS["louvre.txt"][1] and info.num_pages == 1 and info.content_type == "text"
    assert store.document("travel", "louvre.txt").content is None
    with pytest.raises(ConflictError, match="overwrite"):
        store.add_document("travel", "louvre.txt", ["new"])
    store.add_document("travel", "louvre.txt", ["The new Louvre text."], overwrite=True, metadata={"v": "2"})
    replaced = store.document("travel", "louvre.txt", include_content=True)
    assert replaced.content == "The new Louvre text." and replaced.id != info.id and replaced.metadata == {"v": "2"}
    assert store.search("travel", "Mona Lisa", 5, "short_snippet") == []  # the old text is no longer indexed

    paths = sorted(CORPUS)
    assert [d.path for d in store.documents("travel", limit=1024)] == paths
    assert [d.path for d in store.documents("travel", limit=2, path_gt="eiffel.txt")] == paths[2:4]
    assert [d.path for d in store.documents("travel", limit=10, path_prefix="k")] == ["kyoto.txt"]

    store.update_metadata("travel", "kyoto.txt", {"lang": "ja"})
    assert store.document("travel", "kyoto.txt").metadata == {"lang": "ja"}
    with pytest.raises(NotFoundError, match="'nope.txt' does not exist"):
        store.update_metadata("travel", "nope.txt", {})

    assert store.status("travel").num_documents == len(CORPUS)
    assert store.delete_documents("travel", ["kyoto.txt", "nope.txt", "rome.txt"]) == ["kyoto.txt", "rome.txt"]
    with pytest.raises(NotFoundError):
        store.delete_documents("travel", ["kyoto.txt"])
    status = store.status("travel")
    assert status.num_documents == len(CORPUS) - 2
    assert status.num_indexed_bytes == sum(store.document("travel", p).size for p in paths
                                           if p not in ("kyoto.txt", "rome.txt"))
    assert store.status().num_documents == status.num_documents
    check_integrity(store.path)


def test_search_ranks_by_bm25(shared_store):
    store = shared_store
    hits = store.search("travel", "Colosseum amphitheatre", 3, "document")
    assert hits[0].path == "rome.txt" and hits[0].score > 0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    snippets = store.search("travel", "how tall is the tower in metres", 10, "short_snippet")
    assert snippets[0].path == "eiffel.txt" and "330 metres" in snippets[0].text
    long = store.search("travel", "how tall is the tower in metres", 10, "long_snippet")
    assert all(len(h.text) <= LONG_SNIPPET_CHARS for h in long) and len({(h.path, h.start) for h in long}) == len(long)
    assert all(len(h.text) <= SHORT_SNIPPET_CHARS for h in snippets)
    document = store.document("travel", "eiffel.txt", include_content=True).content
    assert all(document[h.start : h.end] == h.text for h in snippets + long if h.path == "eiffel.txt")
    # words only: FTS5 syntax in a query is text, and a query without words finds nothing
    assert store.search("travel", 'tower" OR NOT (* AND', 5, "page")
    assert store.search("travel", "?! ...", 5, "page") == []
    assert match_expression("Tower's tower") == '"Tower" OR "s" OR "tower"'
    with pytest.raises(InvalidRequestError):
        store.search("travel", None, 5, "short_snippet")


def test_store_persists_and_refuses_other_databases(store, tmp_path):
    reopened = SQLiteStore(store.path)
    assert reopened.document("travel", "rome.txt").metadata == {"lang": "it", "year": "0080"}
    assert reopened.search("travel", "Colosseum", 1, "document")[0].path == "rome.txt"
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a zerank store"):
        SQLiteStore(other).collection_names()
    (tmp_path / "notes.txt").write_text("not a database at all, " * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        SQLiteStore(tmp_path / "notes.txt").collection_names()


def test_concurrent_writers_lose_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    store.add_collection("c")
    errors = []

    def add(worker):
        try:
            for i in range(10):
                store.add_document("c", f"{worker}/{i}", [f"worker {worker} document {i} " * 30])
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.status("c").num_documents == 40
    check_integrity(store.path)


# --- transactions ---


class FailingStore(SQLiteStore):
    """Fails while indexing the ``fail_at``-th unit of the next add, after the earlier units' rows were written."""

    fail_at = 2

    def _index(self, conn, collection_id, document_id, unit, content, passages):
        super()._index(conn, collection_id, document_id, unit, content, passages)
        if unit == UNITS[self.fail_at]:
            raise RuntimeError("injected failure")


def test_a_failed_add_leaves_no_trace(store):
    before = check_integrity(store.path)
    failing = FailingStore(store.path)
    with pytest.raises(RuntimeError, match="injected"):
        failing.add_document("travel", "new.txt", ["a brand new tower document " * 50])
    with pytest.raises(RuntimeError, match="injected"):  # an overwrite that fails keeps the old document
        failing.add_document("travel", "rome.txt", ["replaced " * 50], overwrite=True)
    assert check_integrity(store.path) == before
    with pytest.raises(NotFoundError):
        store.document("travel", "new.txt")
    assert store.document("travel", "rome.txt", include_content=True).content == CORPUS["rome.txt"][0]
    assert store.search("travel", "Colosseum", 1, "short_snippet")[0].path == "rome.txt"
    store.add_document("travel", "new.txt", ["works after the failure"])
    assert store.status("travel").num_documents == len(CORPUS) + 1


KILLED_MID_ADD = """
import os, signal, sys
from zerank.serving.search.sqlite_store import SQLiteStore
from zerank.serving.search.store import UNITS

class KilledStore(SQLiteStore):
    def _index(self, conn, collection_id, document_id, unit, content, passages):
        super()._index(conn, collection_id, document_id, unit, content, passages)
        if self.kill and unit == UNITS[2]:
            print("killing", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

store = KilledStore(sys.argv[1])
store.kill = False
store.add_collection("c")
for i in range(3):
    store.add_document("c", f"doc{i}", [f"committed document number {i} " * 40])
    print("committed", i, flush=True)
store.kill = True
store.add_document("c", "doc3", ["this document is never committed " * 400])
print("not reached", flush=True)
"""


def test_a_process_killed_mid_add_loses_no_earlier_document(tmp_path):
    path = tmp_path / "s.db"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_MID_ADD), str(path)],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert result.stdout.split("\n")[:4] == ["committed 0", "committed 1", "committed 2", "killing"]
    assert (tmp_path / "s.db-wal").exists()  # the killed transaction's pages may be there, uncommitted
    store = SQLiteStore(path)
    assert [d.path for d in store.documents("c", limit=10)] == ["doc0", "doc1", "doc2"]
    assert {h.path for h in store.search("c", "committed document never", 10, "long_snippet")} == \
        {"doc0", "doc1", "doc2"}
    counts = check_integrity(path)
    short = len(cut_passages("committed document number 0 " * 40, SHORT_SNIPPET_CHARS))
    assert counts == {"fts_1_document": 3, "fts_1_page": 3, "fts_1_long_snippet": 3, "fts_1_short_snippet": 3 * short}
    store.add_document("c", "doc3", ["added after the crash"])
    assert store.status("c").num_documents == 4
