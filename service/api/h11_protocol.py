"""uvicorn's h11 protocol, answering the requests h11 itself refuses in the service's JSON error body.

A request whose line or headers h11 cannot take (longer than its 16 kB buffer: a file name of
200,000 characters sent in a header, a 1 MB header) never reaches the app: uvicorn answers a
plain-text 400 and closes the socket at once, with the rest of the request unread, so the
kernel resets the connection and the client, still sending, sees the reset instead of the
answer. Here the 400 carries `{"error": "bad_request", "detail": ...}` and the close lingers:
the write side is shut, what the client still sends is read and dropped until it closes, or
for LINGER_S at most.

`python -m service` passes this class to uvicorn as its HTTP protocol (so h11 is used whether
or not httptools is installed).
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol

from service.api.errors import error_response

# How long a refused request's remaining bytes are read before the socket closes anyway.
LINGER_S = 10.0
REFUSED = (
    "The request could not be read as HTTP/1.1: its request line or headers are malformed, or longer "
    f"than the {DEFAULT_MAX_INCOMPLETE_EVENT_SIZE // 1024} kB this service reads (a file name or a "
    "header that long?). Send file names in the multipart body, of at most 4,000 bytes each."
)


class JsonErrorH11Protocol(H11Protocol):
    """H11Protocol whose own 400s are the service's JSON body, followed by a lingering close."""

    lingering = False

    def data_received(self, data: bytes) -> None:
        # h11 bounds only a head still incomplete after a read: one that arrives whole in a single
        # read (a 200 kB header on a quick loopback, read while the loop was busy) went through to
        # the app. Fed in pieces no longer than the bound, every over-long head is refused alike.
        step = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        while len(data) > step and self.conn.their_state is h11.IDLE and not self.lingering:
            super().data_received(data[:step])
            data = data[step:]
        if self.lingering:
            return  # the rest of a refused request: read and dropped
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        body = error_response(400, "bad_request", REFUSED).body
        headers = [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then FIN: the client reads it, then closes
        self.loop.call_later(LINGER_S, self.transport.close)
