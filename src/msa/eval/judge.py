"""An LLM judge over any OpenAI-compatible ``/chat/completions`` endpoint (standard library only).

The judge grades a predicted answer against the reference on the paper's 0-5 scale (rubric below,
in our own words). Its reply is parsed as the first character that is a digit from 0 to 5. A request
that fails (network, HTTP error after retries, malformed JSON) or a reply without such a digit is a
*failure*: it has ``score=None``, is counted in ``JudgeSummary.failures`` and is left out of
``JudgeSummary.mean``. The released evaluation counts failures and empty replies as 0:
``JudgeSummary.mean_failures_as_zero`` is that number (the one to compare with the paper).

Verdicts can be cached on disk (:class:`JudgeCache`, a JSON Lines file keyed by a hash of
(model, prompt)): a re-run with the same judge model and prompts sends no request. Only replies are
cached, never failures, so a re-run retries what failed.

Without an endpoint, :func:`offline_scores` gives exact match and token F1 instead (no network).

Example::

    judge = LLMJudge("https://openrouter.ai/api/v1", "google/gemini-2.5-flash", api_key_env="OPENROUTER_API_KEY")
    summary = judge.judge_many([JudgeItem(q, gold, pred) for q, gold, pred in rows], workers=16)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["RUBRIC", "JudgeCache", "JudgeItem", "JudgeResult", "JudgeSummary", "LLMJudge", "offline_scores",
           "parse_score"]

RUBRIC = """You are grading an answer to a question against a reference answer.

Question: {question}
Reference answer: {reference}
Answer to grade: {prediction}

Give one integer score from 0 to 5:
5 - fully correct: says the same thing as the reference; nothing important is missing or wrong.
4 - correct in substance, with a small omission, imprecision or harmless extra detail.
3 - partly correct: the main point is there but an important part is missing or wrong.
2 - mostly wrong, with only a small relevant part correct.
1 - wrong, but on the topic of the question.
0 - wrong or unrelated, a refusal, or no answer.

Judge meaning, not wording: paraphrases and equivalent forms of names, dates and numbers count as equal.
Reply with the digit only."""
"""The 0-5 grading prompt; ``{question}``, ``{reference}``, ``{prediction}`` are filled in."""


def parse_score(reply: str | None) -> int | None:
    """The first character of ``reply`` that is a digit 0-5, as an int; None if there is none."""
    if not reply:
        return None
    for ch in reply:
        if ch in "012345":
            return int(ch)
    return None


@dataclass(frozen=True)
class JudgeItem:
    """One thing to grade."""

    question: str
    reference: str
    prediction: str


@dataclass
class JudgeResult:
    """score: 0-5 or None on failure; reply: the judge's raw text; error: why it failed (None if ok);
    attempts: requests sent (0: the verdict came from the cache); cached: it came from the cache."""

    score: int | None
    reply: str | None = None
    error: str | None = None
    attempts: int = 0
    cached: bool = False


@dataclass
class JudgeSummary:
    """mean over graded items; failures counted apart; results in input order."""

    mean: float | None
    graded: int
    failures: int
    mean_failures_as_zero: float | None
    results: list[JudgeResult] = field(default_factory=list)

    def to_dict(self, with_results: bool = False) -> dict[str, Any]:
        d = {"mean": self.mean, "graded": self.graded, "failures": self.failures,
             "mean_failures_as_zero": self.mean_failures_as_zero}  # fmt: skip
        if with_results:
            d["results"] = [asdict(r) for r in self.results]
        return d


class JudgeCache:
    """Judge replies on disk: one JSON line ``{"key", "model", "reply"}`` per verdict, appended as it
    arrives (a crash loses at most the line being written; a torn last line is ignored on loading).

    The key is the SHA-256 of the model name, a NUL and the prompt, so a different judge model or rubric
    never reuses a verdict. Thread-safe.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._replies: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._replies[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s: skipped an unreadable cache line", self.path)

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(f"{model}\0{prompt}".encode("utf-8")).hexdigest()

    def get(self, model: str, prompt: str) -> str | None:
        with self._lock:
            return self._replies.get(self.key(model, prompt))

    def put(self, model: str, prompt: str, reply: str) -> None:
        k = self.key(model, prompt)
        with self._lock:
            self._replies[k] = reply
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": k, "model": model, "reply": reply}, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self._replies)


def _verdict(reply: str, attempts: int, cached: bool = False) -> JudgeResult:
    s = parse_score(reply)
    return JudgeResult(s, reply, None if s is not None else "no digit 0-5 in the reply", attempts, cached)


class LLMJudge:
    """Grades answers through an OpenAI-compatible chat completions endpoint.

    Args:
        base_url: the API root, e.g. ``"http://127.0.0.1:8000/v1"``; ``/chat/completions`` is appended.
        model: the model name sent in the request.
        api_key_env: name of the environment variable holding the API key (read at request time;
            unset or empty: no ``Authorization`` header, as local servers need none).
        temperature: sampling temperature (0: deterministic grading).
        max_tokens: reply budget (a digit needs one or two tokens; reasoning models may need more).
        timeout: seconds per HTTP request.
        retries: extra attempts after a failed request (429, 5xx, network errors), with exponential
            backoff starting at ``backoff`` seconds. Other 4xx errors are not retried.
        rubric: the prompt template (default :data:`RUBRIC`).
        cache: a :class:`JudgeCache` or its path; a cached reply is used without a request.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 8, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0, rubric: str = RUBRIC, cache: JudgeCache | str | Path | None = None):  # fmt: skip
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.rubric = rubric
        self.cache = JudgeCache(cache) if isinstance(cache, (str, Path)) else cache

    def prompt(self, item: JudgeItem) -> str:
        return self.rubric.format(question=item.question, reference=item.reference, prediction=item.prediction)

    def _request(self, prompt: str) -> str:
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }).encode("utf-8")  # fmt: skip
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            data = json.loads(resp.read().decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise ValueError(f"reply content is {type(content).__name__}, not a string")
        return content

    def score(self, item: JudgeItem) -> JudgeResult:
        """Grade one item; never raises for request or parse failures (see JudgeResult.error)."""
        prompt = self.prompt(item)
        if self.cache is not None and (reply := self.cache.get(self.model, prompt)) is not None:
            return _verdict(reply, 0, cached=True)
        error = None
        for attempt in range(1, self.retries + 2):
            try:
                reply = self._request(prompt)
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}"
                if not (e.code == 429 or e.code >= 500):
                    return JudgeResult(None, None, error, attempt)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                error = f"{type(e).__name__}: {e}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                return JudgeResult(None, None, f"malformed response: {type(e).__name__}: {e}", attempt)
            else:
                if self.cache is not None:
                    self.cache.put(self.model, prompt, reply)
                return _verdict(reply, attempt)
            if attempt <= self.retries:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        logger.warning("judge request failed after %d attempts: %s", self.retries + 1, error)
        return JudgeResult(None, None, error, self.retries + 1)

    def judge_many(self, items: list[JudgeItem], workers: int = 8) -> JudgeSummary:
        """Grade items concurrently (``workers`` threads); results keep the input order. Identical
        items are graded once and share the result."""
        unique = list(dict.fromkeys(items))
        if workers <= 1:
            graded = [self.score(it) for it in unique]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                graded = list(pool.map(self.score, unique))
        by_item = dict(zip(unique, graded))
        results = [by_item[it] for it in items]
        ok = [r.score for r in results if r.score is not None]
        failures = len(results) - len(ok)
        if failures:
            logger.warning("judge: %d of %d items failed", failures, len(results))
        return JudgeSummary(
            mean=sum(ok) / len(ok) if ok else None,
            graded=len(ok),
            failures=failures,
            mean_failures_as_zero=sum(ok) / len(results) if results else None,
            results=results,
        )


def offline_scores(predictions: list[str], answers: list[Any]) -> dict[str, Any]:
    """The judge's offline stand-in (no endpoint): mean SQuAD exact match and token F1 of the
    predictions against the answers (a string, or a list of acceptable strings, per item)."""
    from msa.eval.metrics import exact_match, token_f1

    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    refs = [[str(x) for x in a] or [""] if isinstance(a, (list, tuple)) else [str(a)] for a in answers]
    em = [exact_match(p, r) for p, r in zip(predictions, refs)]
    f1 = [token_f1(p, r) for p, r in zip(predictions, refs)]
    n = len(em)
    return {"mode": "offline", "em": sum(em) / n if n else None, "token_f1": sum(f1) / n if n else None,
            "n": n, "per_item": [{"em": e, "token_f1": f} for e, f in zip(em, f1)]}  # fmt: skip
