"""Request bodies (pydantic) of the OpenAI-compatible and memory routes, and the error shape.

Unknown request fields are ignored, as OpenAI-compatible servers do; a known field with a value this
server cannot honour (``n`` > 1, ``temperature`` > 0) is a 400 naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from msa.config import DOC_CHOICES


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
             429: "rate_limit_error", 503: "server_error", 504: "timeout_error"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class MsaOptions(BaseModel):
    """The ``msa`` object of a request: how the engine answers (None = the model's own setting)."""

    model_config = ConfigDict(extra="forbid")
    max_rounds: int | None = Field(None, ge=1, le=16)
    doc_choice: Literal[DOC_CHOICES] | None = None  # type: ignore[valid-type]
    top_k: int | None = Field(None, ge=1, le=1024)
    interleave: bool = True
    routing: bool = False  # include every router layer's selection (ids and scores) per round


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = None
    n: int = 1
    msa: MsaOptions | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(GenerateRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(GenerateRequest):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None


class CreateBank(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    id: int | str | None = None


class AddDocuments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[Document] = Field(min_length=1)
    on_duplicate: Literal["skip", "error", "replace"] | None = None
    background: bool | None = None  # None: a job when there are more than the server's sync_add_limit


class UpdateDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    top_k: int | None = Field(None, ge=1, le=1024)


def message_text(m: ChatMessage) -> str:
    """A message's text: the string, or its "text" parts joined (other parts are refused)."""
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    parts = []
    for p in m.content:
        if p.get("type") != "text" or not isinstance(p.get("text"), str):
            raise ApiError(400, "only text content parts are supported", "messages")
        parts.append(p["text"])
    return "".join(parts)


def chat_question(req: ChatRequest) -> str:
    """The question of a chat: the last user message (the engine answers one question against memory;
    earlier turns and system messages do not take part)."""
    users = [m for m in req.messages if m.role == "user"]
    if not users:
        raise ApiError(400, "messages must contain a user message", "messages")
    return message_text(users[-1])


def completion_question(req: CompletionRequest) -> str:
    if isinstance(req.prompt, list):
        if len(req.prompt) != 1:
            raise ApiError(400, "prompt must be one string (batches of prompts: send one request each)", "prompt")
        return req.prompt[0]
    return req.prompt


def stops(req: GenerateRequest) -> list[str]:
    s = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(s) > 4 or any(not x for x in s):
        raise ApiError(400, "stop must be up to 4 non-empty strings", "stop")
    return s
