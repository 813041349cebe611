"""One log entry: what a route knows of a request (`Exchange`) plus its finished /generate-shaped
body → a row of the responses table. Text is kept only when the operator opts in; otherwise a
salted SHA-256, the salt made once per state folder (so equal texts match within one deployment
and cannot be looked up elsewhere)."""

import hashlib
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .flagging import is_flagged


def new_id() -> str:
    return f"resp-{uuid.uuid4().hex}"


@dataclass
class Exchange:
    """A request being answered: its id, route, input and start time. `response` is the text the
    client received when it is not the body's `text` (stop strings on /v1)."""

    route: str
    prompt: str  # the raw prompt, or the chat messages as JSON
    prompt_format: str  # raw | chat (a prompt in the chat template) | messages
    response_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    response: str | None = None


def load_salt(state_dir: Path) -> bytes:
    """The salt of this state folder, made on first use (created exclusively, so racing replicas agree)."""
    path = Path(state_dir) / "log_salt"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # another process is writing it
            if len(salt := path.read_bytes()) == 32:
                return salt
            time.sleep(0.01)
        raise RuntimeError(f"{path} is not a 32-byte salt") from None
    salt = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(salt)
        f.flush()
        os.fsync(f.fileno())
    return salt


@dataclass(frozen=True)
class Context:
    """What every row of one server shares."""

    replica: str
    model: str
    model_fingerprint: str
    flag_risk: float
    keep_text: bool
    salt: bytes

    def digest(self, text: str) -> str:
        return hashlib.sha256(self.salt + text.encode("utf-8")).hexdigest()

    def row(self, exchange: Exchange, body: dict, now: float | None = None) -> dict:
        usage, risk, quadrant = body.get("usage") or {}, body.get("risk") or {}, body.get("quadrant")
        response = exchange.response if exchange.response is not None else body.get("text", "")
        return {
            "id": exchange.response_id,
            "ts": time.time() if now is None else now,
            "replica": self.replica,
            "route": exchange.route,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "calibration": risk.get("calibration") or (quadrant or {}).get("params"),
            "prompt_format": exchange.prompt_format,
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "response_tokens": usage.get("completion_tokens", usage.get("response_tokens", 0)),
            "scores": body.get("scores") or {},
            "quadrant": quadrant["name"] if quadrant else None,
            "risk": risk.get("probability"),
            "detector": risk.get("detector"),
            "in_distribution": risk.get("in_distribution"),
            "distance_ratio": (body.get("scores") or {}).get("probe_distance_ratio"),
            "flagged": is_flagged(body, self.flag_risk),
            "finish_reason": body.get("finish_reason"),
            "latency_s": time.perf_counter() - exchange.started,
            "prompt": exchange.prompt if self.keep_text else None,
            "response": response if self.keep_text else None,
            "prompt_hash": self.digest(exchange.prompt),
            "response_hash": self.digest(response),
        }


def exchange_for(route: str, prompt: str | None, messages: list | None, chat_template: bool = False,
                 response_id: str | None = None) -> Exchange:
    """The Exchange of a request with a raw `prompt` (in the chat template with `chat_template`) or chat `messages`."""
    if messages is not None:
        kind, text = "messages", json.dumps(messages, ensure_ascii=False)
    else:
        kind, text = "chat" if chat_template else "raw", prompt
    return Exchange(route, text, kind, **({"response_id": response_id} if response_id else {}))
