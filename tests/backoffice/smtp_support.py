"""A real SMTP server for the tests (aiosmtpd, in a thread on a free localhost port) that keeps what it
receives, and can be told to refuse (5xx, 4xx) like a real one."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.celery_support import wait_for


def free_port() -> int:
    """A localhost port nothing listens on (yet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Recorder:
    """The aiosmtpd handler: records each message; `rcpt_reply` / `data_reply` make it refuse."""

    messages: list[Received] = field(default_factory=list)
    rcpt_reply: str = ""
    data_reply: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.data_reply:
            return self.data_reply
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def wait(self, count: int = 1, timeout: float = 60) -> list[Received]:
        wait_for(lambda: len(self.messages) >= count, timeout, f"{count} message(s) at the SMTP server")
        return list(self.messages)


class SmtpServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.recorder = Recorder()
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def env(self) -> dict[str, str]:
        """What a worker process needs to send through this server."""
        return {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(self.port), "EMAIL_USE_TLS": "0", "EMAIL_USE_SSL": "0"}


def use_smtp(settings: Any, port: int) -> None:
    """This process sends through 127.0.0.1:`port` with Django's SMTP backend."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 10


@pytest.fixture
def smtp_server(settings: Any) -> Iterator[SmtpServer]:
    """A running SMTP server; this process's email settings point at it."""
    server = SmtpServer().start()
    use_smtp(settings, server.port)
    yield server
    server.stop()


def attachment_of(message: EmailMessage) -> tuple[str, bytes]:
    [part] = [p for p in message.iter_attachments() if p.get_content_type() == "application/pdf"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return part.get_filename() or "", payload


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())
