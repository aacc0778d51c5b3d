"""The wire format: vLLM's `/classify` and OpenAI's chat completions, read strictly and answered in kind.

Requests are plain JSON read by hand rather than by pydantic models, so that
every way a body can be wrong gets one sentence that says what to send instead.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np

from instructemo.data.labels import LabelSpace
from instructemo.data.records import text_problem
from instructemo.infer import Classified


class ApiError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        """OpenAI's (and vLLM's) error shape."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body.decode("utf-8"))  # bytes straight to json.loads would guess UTF-16/32 too
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text; send JSON encoded as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise ApiError(400, "the body nests arrays or objects too deeply; send a flat JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, 'the body must be a JSON object, e.g. {"input": "i feel great"}')
    return data


def check_model(data: dict, served: str) -> None:
    model = data.get("model")
    if model is not None and model != served:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {served!r}", "model", "not_found")


def classify_texts(data: dict, max_texts: int) -> list[str]:
    """The texts of a /classify request: `input` (a string or a list of strings) or `messages` (a chat)."""
    if ("input" in data) == ("messages" in data):
        raise ApiError(400, "send either input (a string or a list of strings) or messages (a chat), one of the two")
    if "messages" in data:
        texts, param = [last_user_text(data["messages"])], "messages"
    else:
        value, param = data["input"], "input"
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, list) and all(isinstance(t, str) for t in value):
            texts = value
        else:
            raise ApiError(400, "input must be a string or a list of strings (send text, not token ids)", "input")
    return checked_texts(texts, param, max_texts)


def checked_texts(texts: list[str], param: str, max_texts: int) -> list[str]:
    if not texts:
        raise ApiError(400, f"{param} is an empty list; send at least one text", param)
    if len(texts) > max_texts:
        raise ApiError(413, f"{len(texts)} texts in one request; the limit is {max_texts}: split the request", param)
    for i, text in enumerate(texts):
        where = f"{param}[{i}]" if param == "input" and len(texts) > 1 else param
        if not text.strip():
            raise ApiError(400, f"{where} is empty; every text needs words to classify", param)
        problem = text_problem(text)  # JSON's \ud800 escapes decode to half a surrogate pair, which is no text
        if problem is not None:
            raise ApiError(400, f"{where} {problem}", param)
    return texts


def last_user_text(messages) -> str:
    """The text to classify in a chat: the last user message (the classifier's own prompt wraps it)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, 'messages must be a non-empty list of {"role": ..., "content": ...}', "messages")
    user = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f'messages[{i}] must be an object with a "role" and a "content"', "messages")
        if message["role"] == "user":
            user = message_text(message.get("content"), i)
    if user is None:
        raise ApiError(400, "messages hold no user message: the last user message is the text to classify", "messages")
    return user


def message_text(content, index: int) -> str:
    """A message's text: a string, or OpenAI's list of parts of type text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        parts = [p.get("text") for p in content]
        if all(isinstance(t, str) for t in parts):
            return "".join(parts)
    raise ApiError(400, f"messages[{index}].content must be text (a string or parts of type text)", "messages")


def chat_texts(data: dict, max_texts: int) -> list[str]:
    """The text of a chat completion request; options that a classifier cannot honour are refused, not ignored."""
    if data.get("stream"):
        raise ApiError(400, "stream: true is not supported: a classification is one short answer; send stream: false")
    if data.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: a classifier gives one answer per text", "n")
    if "messages" not in data:
        raise ApiError(400, "a chat completion needs messages; the last user message is the text to classify")
    return checked_texts([last_user_text(data["messages"])], "messages", max_texts)


def results(classified: Classified, space: LabelSpace) -> list[dict]:
    """One result per text: vLLM's label / probs / num_classes, plus `labels` (multi-label) and `invalid` (generate)."""
    out = []
    for i, chosen in enumerate(classified.labels):
        probs = None if classified.probabilities is None else classified.probabilities[i]
        if probs is not None and not space.multi_label:
            label = space.names[int(np.argmax(probs))]
        elif probs is not None:  # the most probable of the labels chosen: never one the thresholds turned down
            label = max(chosen, key=lambda n: probs[space.names.index(n)]) if chosen else None
        else:
            label = chosen[0] if chosen else None
        item = {
            "label": label,
            "probs": None if probs is None else [float(p) for p in probs],
            "num_classes": len(space.names),
        }
        if space.multi_label:
            item["labels"] = list(chosen or ())
        if classified.answers is not None:
            item["invalid"] = chosen is None
            item["answer"] = classified.answers[i]
        out.append(item)
    return out


def classify_response(model: str, items: list[dict]) -> dict:
    return {
        "id": f"classify-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [{"index": i, **item} for i, item in enumerate(items)],
    }


def chat_response(model: str, item: dict, space: LabelSpace) -> dict:
    """The answer as the assistant's message: what the model generated, or the trained answer for the chosen labels."""
    if "answer" in item:
        content = item["answer"]
    else:
        content = space.answer(item["labels"] if space.multi_label else [item["label"]])
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "classification": item,
    }


def models_response(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "instructemo"}]}
