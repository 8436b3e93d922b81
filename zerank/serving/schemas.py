"""The request and response models of the rerank routes (pydantic): ZeroEntropy, Cohere/Jina/vLLM, TEI, the model
list and the health report. Field descriptions render in the OpenAPI schema (``/openapi.json``, ``/docs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

RERANK_PATH = "/v1/models/rerank"
"""ZeroEntropy's rerank route (its SDKs post here under ``base_url``)."""


class ZeroEntropyRerankRequest(BaseModel):
    """The zeroentropy SDK's ModelRerankParams."""

    model: str = Field(description="A served model name (see GET /v1/models).", examples=["zerank-1"])
    query: str = Field(description="The query to rerank the documents by.")
    documents: list[str] = Field(description="The documents to rerank, each a string. May be empty.")
    top_n: int | None = Field(None, ge=1, strict=True,
                              description="Return only the n most relevant documents (default: all).")
    latency: Literal["fast", "slow"] | None = Field(
        None, description="Accepted for compatibility with ZeroEntropy's API; a self-hosted server has one mode."
    )


class Span(BaseModel):
    """The document's best window (``zerank serve --long-documents chunk``): an extra field every client tolerates."""

    start: int = Field(description="Offset of the window's first character in the document (Unicode code points).")
    end: int = Field(description="Offset after its last character: the passage is `text[start:end]`.")
    windows: int = Field(description="Windows the document was scored in (1: it fit, the span is all of it).")


SPAN_DESCRIPTION = ("With --long-documents chunk: the best window of the document, whose score is the document's "
                    "(under the default max aggregation).")


class RerankResult(BaseModel):
    index: int = Field(description="Index of the document in the request's `documents`.")
    relevance_score: float = Field(description="Calibrated relevance in [0, 1]; depends only on the query and "
                                               "this document.")
    span: Span | None = Field(None, description=SPAN_DESCRIPTION)


class RerankResponse(BaseModel):
    results: list[RerankResult] = Field(description="Results by descending relevance (ties keep request order).")
    actual_latency_mode: Literal["fast", "slow"] = Field(description="The requested mode, `fast` by default.")
    e2e_latency: float = Field(description="Seconds from receiving the request to sending the response.")
    inference_latency: float = Field(description="Seconds of model scoring for the batch this request was in.")
    total_bytes: int = Field(description="UTF-8 bytes of the query and documents.")
    total_tokens: int = Field(description="Tokens scored: every (query, document) prompt, template included.")


class TextDocument(BaseModel):
    text: str = Field(description="The document's text.")


class CohereRerankRequest(BaseModel):
    """Cohere's /v1 and /v2 rerank request, as Jina, vLLM, Infinity and SGLang also accept it."""

    model: str | None = Field(None, description="A served model name (default: the served model).")
    query: str = Field(description="The query to rerank the documents by.")
    documents: list[str | TextDocument] = Field(description="Strings or {\"text\": ...} objects. May be empty.")
    top_n: int | None = Field(None, ge=1, strict=True,
                              description="Return only the n most relevant documents (default: all).")
    return_documents: bool | None = Field(
        None, description="Echo each document's text as `document.text` (default: true on /v1 as Jina and vLLM "
                          "do, false on /v2 as Cohere does).")
    max_tokens_per_doc: int | None = Field(None, ge=1, strict=True, description="Cut documents to their first tokens.")


class CohereDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int = Field(description="Index of the document in the request's `documents`.")
    relevance_score: float = Field(description="Calibrated relevance in [0, 1].")
    document: CohereDocument | None = Field(None, description="The document, with `return_documents`.")
    span: Span | None = Field(None, description=SPAN_DESCRIPTION)


class Usage(BaseModel):
    total_tokens: int = Field(description="Tokens scored: every (query, document) prompt, template included.")
    prompt_tokens: int = Field(description="The same count (there are no completion tokens).")


class CohereRerankResponse(BaseModel):
    id: str = Field(description="A fresh id for this response.")
    model: str = Field(description="The served model's name.")
    results: list[CohereResult] = Field(description="Results by descending relevance (ties keep request order).")
    meta: dict[str, Any] = Field(description="Cohere's `meta`: api_version and billed_units.")
    usage: Usage


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference's /rerank request."""

    query: str
    texts: list[str] = Field(description="The documents to rerank.")
    raw_scores: bool = Field(False, description="Return the calibrated logit instead of the 0..1 score.")
    return_text: bool = Field(False, description="Echo each text.")
    truncate: bool | None = Field(False, description="Cut documents longer than the server accepts (else 400).")
    truncation_direction: Literal["left", "right", "Left", "Right"] = Field(
        "right", description="Which end of a long document is kept: right cuts the end, left the beginning.")


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None
    span: Span | None = Field(None, description=SPAN_DESCRIPTION)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "zerank"
    root: str = Field(description="The canonical name of the served model this name resolves to.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "draining"]
    model: str = Field(description="The served model's name (never its local path).")
    served_model_names: list[str]
    device: str
    dtype: str
    max_seq_length: int
    requests_scored: int
    scoring_rounds: int
    pairs_scored: int
    requests_cancelled: int
    pairs_cancelled: int
    requests_rejected: int
    queued: int = Field(description="Requests waiting for or being scored.")
    queued_pairs: int = Field(description="Their pairs (bounded by --max-queued-pairs).")
