"""echo: the smallest Klieg app. Three CPU functions, no requirements beyond the SDK.

POST /{owner}/echo         {"text": "hi"}  -> {"text": "hi", "length": 2}
POST /{owner}/echo/upper   {"text": "hi"}  -> {"text": "HI", "length": 2}
POST /{owner}/echo/morse   {"text": "sos", "wpm": 20, "pitch_hz": 600}
                           -> {"audio": Audio (WAV), "code": "... --- ...", "seconds": 1.62}

``/morse`` sends the text back as sound: International Morse code keyed as a sine tone,
16-bit mono PCM at 8 kHz in a WAV file (stdlib ``wave``). Timing is the PARIS standard: a dot is
``1.2 / wpm`` seconds, a dash three dots, one dot of silence inside a letter, three between
letters and seven between words; each tone fades in and out over 5 ms so it does not click.
A character without a Morse code fails with 422 naming ``text``.
"""

from __future__ import annotations

import io
import math
import struct
import wave

from pydantic import BaseModel, Field, field_validator

import klieg

app = klieg.App("echo")

RATE = 8000
"""Samples per second of the WAV /morse returns."""
RAMP_S = 0.005
_TABLE = """
A .-     B -...   C -.-.   D -..    E .      F ..-.   G --.    H ....   I ..     J .---
K -.-    L .-..   M --     N -.     O ---    P .--.   Q --.-   R .-.    S ...    T -
U ..-    V ...-   W .--    X -..-   Y -.--   Z --..
0 -----  1 .----  2 ..---  3 ...--  4 ....-  5 .....  6 -....  7 --...  8 ---..  9 ----.
. .-.-.- , --..-- ? ..--.. ' .----. ! -.-.-- / -..-.  ( -.--.  ) -.--.- & .-...  : ---...
; -.-.-. = -...-  + .-.-.  - -....- _ ..--.- " .-..-. $ ...-..- @ .--.-.
"""
_CELLS = _TABLE.split()
CODES = dict(zip(_CELLS[0::2], _CELLS[1::2], strict=True))
"""Character -> its International Morse code."""


class EchoIn(BaseModel):
    text: str = Field(description="text to send back", max_length=100_000)


class EchoOut(BaseModel):
    text: str
    length: int


class MorseIn(BaseModel):
    text: str = Field(
        description="letters, digits, spaces and common punctuation", min_length=1, max_length=100
    )
    wpm: int = Field(20, ge=5, le=40, description="speed in words per minute")
    pitch_hz: int = Field(600, ge=200, le=2000, description="the tone's pitch")

    @field_validator("text")
    @classmethod
    def _keyable(cls, text: str) -> str:
        unknown = sorted({c for c in text.upper() if c not in CODES and not c.isspace()})
        if unknown:
            raise ValueError(f"no Morse code for {''.join(unknown)!r}")
        return text


class MorseOut(BaseModel):
    audio: klieg.Audio
    code: str
    seconds: float


@app.function(keep_alive=300, max_concurrency=2)
@klieg.endpoint("/")
def echo(req: EchoIn) -> EchoOut:
    return EchoOut(text=req.text, length=len(req.text))


@app.function(keep_alive=300)
def upper(req: EchoIn) -> EchoOut:
    print(f"upper-casing {len(req.text)} characters")
    return EchoOut(text=req.text.upper(), length=len(req.text))


def _tone(units: int, unit_s: float, pitch_hz: int) -> bytes:
    n = round(units * unit_s * RATE)
    ramp = max(1, round(RAMP_S * RATE))
    samples = []
    for i in range(n):
        edge = min(1.0, i / ramp, (n - 1 - i) / ramp)
        samples.append(round(0.6 * 32767 * edge * math.sin(2 * math.pi * pitch_hz * i / RATE)))
    return struct.pack(f"<{n}h", *samples)


@app.function(keep_alive=300)
@klieg.endpoint("/morse")
def morse(req: MorseIn) -> MorseOut:
    unit_s = 1.2 / req.wpm
    dot, dash = _tone(1, unit_s, req.pitch_hz), _tone(3, unit_s, req.pitch_hz)

    def gap(units: int) -> bytes:
        return bytes(2 * round(units * unit_s * RATE))

    words = [[CODES[c] for c in word] for word in req.text.upper().split()]
    pcm = b"".join(
        (gap(7) if w else b"")
        + gap(3).join(gap(1).join(dot if s == "." else dash for s in code) for code in word)
        for w, word in enumerate(words)
    )
    print(f"keyed {sum(map(len, words))} characters at {req.wpm} wpm, {req.pitch_hz} Hz")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm)
    return MorseOut(
        audio=klieg.Audio.from_bytes(out.getvalue(), "audio/wav", "morse.wav"),
        code=" / ".join(" ".join(word) for word in words),
        seconds=round(len(pcm) / 2 / RATE, 3),
    )
