"""zerank.serving.search.api: ZeroEntropy's collections, documents and queries against ``zerank serve``, with
the official Python SDK (zeroentropy 0.1.0a11) and Node SDK (0.1.0-alpha.10), reranked by the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import zeroentropy
from fastapi import FastAPI
from fastapi.testclient import TestClient
from uvicorn_thread import running_server

from zerank.serving.arguments import ServeArguments
from zerank.utils.arguments import ModelArguments
from zerank.serving.search.api import make_search_router
from zerank.serving.app import create_app
from zerank.serving.search.sqlite_store import SQLiteStore
from zerank.serving.search.store import LONG_SNIPPET_CHARS, SHORT_SNIPPET_CHARS

KEY = "search-key"
JS = Path(__file__).resolve().parent / "js"
QUERY = "What is the capital of France?"
FRANCE = " ".join([
    "France is a country in Western Europe.", "Its capital is Paris, which is also its largest city.",
    "Paris lies on the Seine and is known for the Eiffel Tower and the Louvre.",
    "The French Republic has thirteen regions on the mainland.",
] * 12)  # ~2,600 characters: two long snippets, many short ones
DOCUMENTS = {
    "france.txt": FRANCE,
    "germany.txt": "Berlin is the capital of Germany and its largest city.",
    "italy.txt": "Rome is the capital of Italy; the Colosseum stands there.",
    "cooking.txt": "A good omelette needs fresh eggs, butter and a hot pan.",
    "tokyo.txt": "日本の首都は東京です。",
}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_cross_encoder, tmp_path_factory):
    """(url, ServeArguments) of a server with the tiny model and a fresh store."""
    args = ServeArguments(api_key=KEY, store=tmp_path_factory.mktemp("store") / "search.sqlite3")
    app = create_app(args, ModelArguments(model=str(tiny_model_dir)), model=tiny_cross_encoder)
    with running_server(app, args) as (url, _, _):
        yield url, args


@pytest.fixture(scope="module")
def client(server) -> zeroentropy.ZeroEntropy:
    """An SDK client of ``server`` with collection "docs" holding ``DOCUMENTS``."""
    client = zeroentropy.ZeroEntropy(api_key=KEY, base_url=f"{server[0]}/v1", max_retries=0, timeout=120)
    client.collections.add(collection_name="docs")
    for i, (path, text) in enumerate(DOCUMENTS.items()):
        client.documents.add(collection_name="docs", path=path, content={"type": "text", "text": text},
                             metadata={"kind": "travel" if i < 3 else "other", "list:tags": [path[:2]]})
    return client


def predict(model, query: str, texts: list[str]) -> list[float]:
    return [float(s) for s in model.predict([(query, text) for text in texts])]


# --- the Python SDK ---


def test_seed_top_snippets_example(client, tiny_cross_encoder):
    response = client.queries.top_snippets(collection_name="docs", query=QUERY, k=5, reranker="zerank-1",
                                           precise_responses=False, include_document_metadata=False)
    results = response.results
    assert 1 <= len(results) <= 5
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    # reranked: each score is the served model's score of the snippet, as CrossEncoder.predict gives it
    for result, expected in zip(results, predict(tiny_cross_encoder, QUERY, [r.content for r in results])):
        assert abs(result.score - expected) <= 1e-5
    for result in results:
        text = DOCUMENTS[result.path]
        assert text[result.start_index : result.end_index] == result.content
        assert len(result.content) <= LONG_SNIPPET_CHARS and result.page_span == [0, 1]
    assert {r.path for r in results} == {d.path for d in response.document_results}
    best = {}
    for result in results:
        best.setdefault(result.path, result.score)
    assert [(d.path, d.score) for d in response.document_results] == list(best.items())
    assert all(d.metadata is None for d in response.document_results)


def test_precise_responses_choose_short_snippets(client):
    precise = client.queries.top_snippets(collection_name="docs", query="Seine Louvre", k=20, precise_responses=True,
                                          include_document_metadata=True)
    assert all(len(r.content) <= SHORT_SNIPPET_CHARS for r in precise.results)
    assert precise.document_results[0].metadata == {"kind": "travel", "list:tags": ["fr"]}
    long = client.queries.top_snippets(collection_name="docs", query="Seine Louvre", k=20)
    assert [r.path for r in long.results] == ["france.txt", "france.txt"]  # the only matches: two long snippets
    assert max(len(r.content) for r in long.results) > SHORT_SNIPPET_CHARS
    assert len(precise.results) == FRANCE.count("Seine") > len(long.results)  # one short snippet per sentence
    # without a reranker: BM25 order and scores
    assert [r.score for r in long.results] == sorted((r.score for r in long.results), reverse=True)


def test_top_documents_bm25_reranked_filtered_and_listed(client, tiny_cross_encoder):
    bm25 = client.queries.top_documents(collection_name="docs", query="Colosseum", k=3)
    assert [r.path for r in bm25.results] == ["italy.txt"] and bm25.results[0].metadata is None
    query = "capital city"
    reranked = client.queries.top_documents(collection_name="docs", query=query, k=2, reranker="zerank-1",
                                            include_metadata=True)
    candidates = ["france.txt", "germany.txt", "italy.txt"]  # the documents with "capital" or "city"
    scores = dict(zip(candidates, predict(tiny_cross_encoder, query, [DOCUMENTS[p] for p in candidates])))
    assert [r.path for r in reranked.results] == sorted(candidates, key=lambda p: -scores[p])[:2]
    for result in reranked.results:
        assert abs(result.score - scores[result.path]) <= 1e-5 and result.metadata["kind"] == "travel"
    filtered = client.queries.top_documents(collection_name="docs", query=query, k=5,
                                            filter={"list:tags": {"$in": ["ge", "it"]}})
    assert {r.path for r in filtered.results} == {"germany.txt", "italy.txt"}
    listed = client.queries.top_documents(collection_name="docs", query=None, k=10, filter={"kind": {"$ne": "travel"}})
    assert [r.path for r in listed.results] == ["cooking.txt", "tokyo.txt"]


def test_documents_collections_status_and_pages(client, server):
    client.collections.add(collection_name="crud")
    assert client.collections.get_list().collection_names == ["crud", "docs"]
    with pytest.raises(zeroentropy.ConflictError, match="already exists"):
        client.collections.add(collection_name="crud")
    pages = ["The first page is about otters.", "The second page is about beavers."]
    client.documents.add(collection_name="crud", path="book", content={"type": "text-pages", "pages": pages})
    for i in range(5):
        client.documents.add(collection_name="crud", path=f"notes/{i}", content={"type": "text", "text": f"note {i}"})
    with pytest.raises(zeroentropy.ConflictError, match="overwrite"):
        client.documents.add(collection_name="crud", path="notes/0", content={"type": "text", "text": "x"})
    client.documents.add(collection_name="crud", path="notes/0", content={"type": "text", "text": "new"},
                         overwrite=True)

    info = client.documents.get_info(collection_name="crud", path="book", include_content=True).document
    assert info.content == "\n".join(pages) and info.num_pages == 2 and info.index_status == "indexed"
    assert info.size == len(info.content.encode()) and info.metadata == {}
    assert httpx.get(info.file_url, headers={"Authorization": f"Bearer {KEY}"}).text == info.content
    page = client.documents.get_page_info(collection_name="crud", path="book", page_index=1, include_content=True)
    assert page.page.content == pages[1]
    # the SDK's auto-pagination: limit 2 a page, the next page after the last path
    assert [d.path for d in client.documents.get_info_list(collection_name="crud", limit=2)] == \
        ["book"] + [f"notes/{i}" for i in range(5)]
    assert [d.path for d in client.documents.get_info_list(collection_name="crud", path_prefix="notes/3")] == \
        ["notes/3"]

    top = client.queries.top_pages(collection_name="crud", query="beavers", k=3, include_content=True)
    assert [(r.path, r.page_index, r.content) for r in top.results] == [("book", 1, pages[1])]
    assert [d.path for d in top.document_results] == ["book"]

    client.documents.update(collection_name="crud", path="book", metadata={"list:animals": ["otter", "beaver"]})
    assert client.documents.get_info(collection_name="crud", path="book").document.metadata == \
        {"list:animals": ["otter", "beaver"]}
    deleted = client.documents.delete(collection_name="crud", path=["notes/1", "notes/9", "notes/2"])
    assert deleted.deleted_paths == ["notes/1", "notes/2"]
    with pytest.raises(zeroentropy.NotFoundError, match="notes/9"):
        client.documents.delete(collection_name="crud", path="notes/9")
    status = client.status.get_status(collection_name="crud")
    assert (status.num_documents, status.num_indexed_documents, status.num_failed_documents) == (4, 4, 0)
    assert client.status.get_status().num_documents == 4 + len(DOCUMENTS)

    client.collections.delete(collection_name="crud")
    with pytest.raises(zeroentropy.NotFoundError, match="'crud' does not exist"):
        client.documents.get_info(collection_name="crud", path="book")
    # the store is the server's --store file, and it persists
    assert SQLiteStore(server[1].store).collection_names() == ["docs"]


def test_errors_name_the_problem(client, server):
    with pytest.raises(zeroentropy.APIStatusError, match="auto.*not supported.*text-pages") as error:
        client.documents.add(collection_name="docs", path="a.pdf", content={"type": "auto", "base64_data": "JVBERi0="})
    assert error.value.status_code == 415
    with pytest.raises(zeroentropy.NotFoundError, match="not served here"):
        client.queries.top_snippets(collection_name="docs", query=QUERY, k=5, reranker="gpt-4")
    with pytest.raises(zeroentropy.BadRequestError, match="Unknown filter operator '\\$regex'"):
        client.queries.top_documents(collection_name="docs", query=QUERY, k=5, filter={"kind": {"$regex": "t"}})
    with pytest.raises(zeroentropy.BadRequestError, match="must be a string"):
        client.documents.update(collection_name="docs", path="italy.txt", metadata={"tags": ["a"]})
    with pytest.raises(zeroentropy.BadRequestError, match="indexed when they are added"):
        client.documents.update(collection_name="docs", path="italy.txt", index_status="not_indexed")
    with pytest.raises(zeroentropy.UnprocessableEntityError):
        client.queries.top_snippets(collection_name="docs", query=QUERY, k=129)
    with pytest.raises(zeroentropy.NotFoundError, match="'nope' does not exist"):
        client.queries.top_snippets(collection_name="nope", query=QUERY, k=5)
    with pytest.raises(zeroentropy.AuthenticationError):
        zeroentropy.ZeroEntropy(api_key="wrong", base_url=f"{server[0]}/v1", max_retries=0).collections.get_list()


# --- reranking depth, with a fake model ---


def test_rerank_scores_the_first_stage_candidates_then_keeps_k(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    store.add_collection("c")
    for i in range(30):  # BM25 prefers the documents that say "tower" most: tower29 first
        store.add_document("c", f"tower{i:02d}", [" ".join(["tower"] * (i + 1) + ["filler"] * 40) + f" id{i}"])
    seen = []

    async def rerank(query, documents, request):
        seen.append(len(documents))
        return [{"id3": 1.0, "id25": 0.9}.get(d.split()[-1], 0.5) for d in documents]  # prefers tower03, tower25

    app = FastAPI()
    app.include_router(make_search_router(store, rerank, rerank_candidates=10))
    with TestClient(app) as http:
        def top(k, **extra):
            body = {"collection_name": "c", "query": "tower", "k": k, **extra}
            return [r["path"] for r in http.post("/v1/queries/top-documents", json=body).json()["results"]]

        assert top(3) == ["tower29", "tower28", "tower27"]
        assert top(3, reranker="zerank-1") == ["tower25", "tower29", "tower28"]  # tower03 is not a candidate
        assert seen == [10]
        assert top(29, reranker="zerank-1")[:3] == ["tower03", "tower25", "tower29"]  # ties keep BM25 order
        assert seen == [10, 29]


# --- the Node SDK ---


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    """node_modules with the pinned SDK (tests/js/package.json), installed once into $ZERANK_NODE_SDK_DIR (default:
    ~/.cache/zerank/node-sdk)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the Node SDK test")
    folder = Path(os.environ.get("ZERANK_NODE_SDK_DIR", Path.home() / ".cache" / "zerank" / "node-sdk"))
    wanted = json.loads((JS / "package.json").read_text())["dependencies"]["zeroentropy"]
    installed = folder / "node_modules" / "zeroentropy" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(JS / "package.json", folder / "package.json")
        result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--no-save"], cwd=folder,
                                capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            pytest.skip(f"npm could not install zeroentropy@{wanted} (offline?): {result.stderr.strip()[-300:]}")
    return folder / "node_modules"


def test_node_sdk_seed_example_and_documents(node_sdk, server, tiny_cross_encoder):
    documents = {path: DOCUMENTS[path] for path in ("france.txt", "germany.txt", "cooking.txt")}
    env = {**os.environ, "NODE_PATH": str(node_sdk), "ZEROENTROPY_BASE_URL": f"{server[0]}/v1",
           "ZEROENTROPY_API_KEY": KEY}
    result = subprocess.run(["node", str(JS / "search_sdk.cjs"), json.dumps(documents)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)

    assert "node-sdk" in out["collections"]
    snippets = out["snippets"]["results"]
    assert 1 <= len(snippets) <= 5
    for snippet, expected in zip(snippets, predict(tiny_cross_encoder, QUERY, [s["content"] for s in snippets])):
        assert abs(snippet["score"] - expected) <= 1e-5
        assert documents[snippet["path"]][snippet["start_index"] : snippet["end_index"]] == snippet["content"]
    assert all(d["metadata"] is None for d in out["snippets"]["document_results"])
    assert all(len(s["content"]) <= SHORT_SNIPPET_CHARS for s in out["precise"]["results"])
    assert {r["path"] for r in out["documents"]["results"]} <= set(documents)
    assert all(r["metadata"] == {"sdk": "node"} for r in out["documents"]["results"])
    assert out["pages"]["results"][0]["content"] == "second page"
    assert out["info"]["content"] == "first page\nsecond page" and out["page"]["content"] == "second page"
    assert out["list"] == ["cooking.txt", "france.txt"]
    assert out["update"] == {"message": "Success!"} and out["updated_metadata"] == {"list:tags": ["a"]}
    assert out["deleted"] == ["pages.txt"]
    assert out["status"]["num_documents"] == len(documents)
    assert out["binary"]["status"] == 415 and "text-pages" in out["binary"]["message"]
    assert out["duplicate"] == {"status": 409, "name": "ConflictError"}
    assert "node-sdk" not in out["after_delete"]
