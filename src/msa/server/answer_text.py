"""The answer text of a question as it is generated: deltas for streaming, cut at stop strings.

The engine's answer (``Answer.text``) is the text after the last ``answer_lead`` of the transcript, up
to the end of the turn, stripped. ``AnswerStream`` applies the same rule to the generated token texts
as they come, holding back what could still turn into an end marker or a stop string and trailing
whitespace, so that the deltas joined equal the final answer.
"""

from __future__ import annotations


def cut_at_stops(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first occurrence of any stop string; and whether one occurred."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if at < 0 else (text[:at], True)


class AnswerStream:
    """Args: lead: the prompt's ``answer_lead``; ends: end-of-turn markers; stops: the request's stops."""

    def __init__(self, lead: str, ends: list[str], stops: list[str]):
        self.lead, self.ends, self.stops = lead, ends, stops
        self.raw = ""
        self.sent = ""
        self.stopped = False  # a stop string or an end marker was reached: nothing more is sent

    def feed(self, piece: str) -> str:
        """Take one generated token's text; the answer text that is now certain and not yet sent."""
        self.raw += piece
        if self.stopped:
            return ""
        j = self.raw.rfind(self.lead)
        if j < 0:
            return ""
        body, ended = cut_at_stops(self.raw[j + len(self.lead) :].lstrip(), self.ends)
        body, hit = cut_at_stops(body, self.stops)
        if not (ended or hit):
            body = body[: len(body) - self._held(body)]
        safe = body.rstrip()
        if ended or hit:
            self.stopped = True
            safe = body if hit else safe
        if not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent) :], safe
        return delta

    def finish(self, final: str) -> str:
        """The rest of the final answer text (already cut at the stops); "" if the deltas sent are not
        its beginning (a token text that decoded differently alone)."""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""

    def _held(self, body: str) -> int:
        """Length of the longest end of ``body`` that begins a marker or stop string."""
        best = 0
        for m in self.ends + self.stops:
            for n in range(min(len(m) - 1, len(body)), best, -1):
                if body.endswith(m[:n]):
                    best = n
                    break
        return best
