"""Streamers: receive tokens while :func:`turbogen.generate` runs.

The protocol is transformers': ``generate`` calls ``streamer.put(tokens)`` once with the prompt (a CPU
``LongTensor [1, prompt_length]``) and then once per step with the new token (``LongTensor [1]``), and
``streamer.end()`` when generation is over. Any object with those two methods works, transformers'
``TextStreamer``, ``TextIteratorStreamer`` and ``AsyncTextIteratorStreamer`` included; the classes here behave
like those three.

Text is released in printable pieces: decoding is redone over the tokens of the current line, and only the
part up to the last space is emitted (a later token may still change the end of a word), except after a
newline, which flushes the line, or after a CJK character, which is a word by itself. Joining every emitted
piece gives the decoded text of all streamed tokens.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any, Optional

import torch

__all__ = ["AsyncTextIteratorStreamer", "BaseStreamer", "TextIteratorStreamer", "TextStreamer"]

# CJK Unified Ideographs blocks (with extensions and compatibility ideographs): each such character is a
# word by itself, so it can be released without waiting for a space.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(character: str) -> bool:
    code = ord(character)
    return any(low <= code <= high for low, high in _CJK_RANGES)


class BaseStreamer:
    """Base class of streamers: ``put`` receives token ids, ``end`` marks the end of generation."""

    def put(self, value: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement put(value)")

    def end(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement end()")


class TextStreamer(BaseStreamer):
    """Prints the text to stdout as soon as whole words are available.

    Args:
        tokenizer: decodes the token ids (anything with ``decode(list[int], **kwargs) -> str``).
        skip_prompt: do not emit the prompt (the first ``put`` of each generation).
        **decode_kwargs: passed to ``tokenizer.decode`` (e.g. ``skip_special_tokens=True``).

    Only batch size 1 can be streamed as text.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self._line_tokens: list[int] = []  # tokens since the last flushed newline
        self._emitted_chars = 0  # characters of the decoded line already emitted
        self._expecting_prompt = True

    def put(self, value: torch.Tensor) -> None:
        """Takes the next token ids (``[1, n]`` or ``[n]``) and emits whatever became printable."""
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError(f"{type(self).__name__} only supports batch size 1, got {value.shape[0]} rows")
            value = value[0]
        if self.skip_prompt and self._expecting_prompt:
            self._expecting_prompt = False
            return
        self._expecting_prompt = False
        self._line_tokens.extend(value.tolist())
        text = self.tokenizer.decode(self._line_tokens, **self.decode_kwargs)
        if text.endswith("\n"):
            printable = text[self._emitted_chars :]
            self._line_tokens, self._emitted_chars = [], 0
        elif text and _is_cjk(text[-1]):
            printable = text[self._emitted_chars :]
            self._emitted_chars += len(printable)
        else:
            printable = text[self._emitted_chars : text.rfind(" ") + 1]
            self._emitted_chars += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        """Emits what is left and signals the end of the stream; the streamer is then ready for a new prompt."""
        printable = ""
        if self._line_tokens:
            printable = self.tokenizer.decode(self._line_tokens, **self.decode_kwargs)[self._emitted_chars :]
        self._line_tokens, self._emitted_chars = [], 0
        self._expecting_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Where printable text goes; here, stdout (with a newline at the end of the stream)."""
        print(text, flush=True, end=None if stream_end else "")


class TextIteratorStreamer(TextStreamer):
    """Queues the printable text for a consumer iterating over the streamer, typically while ``generate``
    runs in another thread::

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        Thread(target=turbogen.generate, args=(model, input_ids), kwargs={"streamer": streamer}).start()
        for piece in streamer:
            print(piece, end="")

    Args:
        timeout: seconds to wait for the next piece (``queue.Empty`` is raised after that); ``None`` waits
            forever, which blocks the consumer if ``generate`` fails, so a timeout is advisable.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: Optional[float] = None,
                 **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration
        return value


class AsyncTextIteratorStreamer(TextStreamer):
    """Queues the printable text for a coroutine iterating over the streamer with ``async for``, while
    ``generate`` runs in another thread (or an executor)::

        async def main():
            streamer = AsyncTextIteratorStreamer(tokenizer, skip_prompt=True)   # inside the running loop
            thread = Thread(target=turbogen.generate, args=(model, input_ids), kwargs={"streamer": streamer})
            thread.start()
            async for piece in streamer:
                print(piece, end="")

    The streamer binds to the event loop running where it is created, so it must be created inside a coroutine
    (``RuntimeError`` otherwise); ``generate``'s thread hands each piece to that loop thread-safely.

    Args:
        timeout: seconds to wait for the next piece (``TimeoutError`` is raised after that); ``None`` waits
            forever, which blocks the consumer if ``generate`` fails, so a timeout is advisable.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: Optional[float] = None,
                 **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("AsyncTextIteratorStreamer must be created inside a coroutine (it needs the running "
                               "event loop, to which generate()'s thread hands the text)") from None
        self.text_queue: "asyncio.Queue[Optional[str]]" = asyncio.Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        # Called from generate()'s thread: asyncio queues are not thread-safe, so the loop does the put.
        self.loop.call_soon_threadsafe(self.text_queue.put_nowait, text)
        if stream_end:
            self.loop.call_soon_threadsafe(self.text_queue.put_nowait, self.stop_signal)

    def __aiter__(self) -> "AsyncTextIteratorStreamer":
        return self

    async def __anext__(self) -> str:
        try:
            value = await asyncio.wait_for(self.text_queue.get(), timeout=self.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no streamed text arrived within {self.timeout} s") from None
        if value is self.stop_signal:
            raise StopAsyncIteration
        return value
