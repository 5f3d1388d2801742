"""The background-thread mode of :class:`~turbogen.serving.engine.Engine`: its step loop in a thread of its own,
requests submitted from any thread through a thread-safe command queue, each followed through a
:class:`RequestHandle` (wait for the result, or iterate the tokens as they come).

Only the loop's thread touches the Engine's state (the scheduler, the cache, the requests): other threads put
commands (add, abort) on a queue the loop drains before each step, and the loop hands each step's outputs to the
handles. :meth:`BackgroundLoop.shutdown` stops the loop after its current step; whatever was not finished then ends
with ``finish_reason="aborted"`` (or "error" with the message if the loop itself failed), so no handle waits
forever.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Hashable, Iterator, Optional

import torch

from .request import FinishReason, PreparedRequest, Request, RequestOutput

__all__ = ["BackgroundLoop", "RequestHandle"]


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class BackgroundLoop:
    """The background mode of an Engine (a mixin: the Engine provides ``prepare``, ``scheduler``, ``_requests``,
    ``_reports``, ``_ids``, ``_admit``, ``_finish`` and ``_step``)."""

    def _init_background(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._commands: "queue.SimpleQueue" = queue.SimpleQueue()
        self._wake = threading.Condition()
        self._stopping = False
        self._handles: dict = {}
        self._failure: Optional[BaseException] = None

    def start(self) -> "BackgroundLoop":
        """Run the step loop in a background thread; requests then come through :meth:`submit` (any thread)."""
        if self._thread is not None:
            raise RuntimeError("this Engine's background thread is already running")
        if self._failure is not None:
            raise RuntimeError("this Engine's background loop failed earlier") from self._failure
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="turbogen-engine", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "BackgroundLoop":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def submit(self, input_ids: Any, generation_config: Any = None, *, request_id: Optional[Hashable] = None,
               **kwargs: Any) -> "RequestHandle":
        """Thread-safe :meth:`add_request` for the background mode: returns a :class:`RequestHandle`. Bad input
        raises here, in the caller's thread."""
        spec = self.prepare(input_ids, generation_config, **kwargs)
        return self._submit_prepared(spec, request_id)

    def _submit_prepared(self, spec: PreparedRequest, request_id: Optional[Hashable]) -> "RequestHandle":
        if self._thread is None:
            raise RuntimeError("submit() needs the background thread: call start() first (or use add_request)")
        with self._wake:
            if self._stopping or self._failure is not None:
                raise RuntimeError("this Engine is shutting down or failed: it takes no more requests")
            if request_id is None:
                request_id = next(self._ids)
                while request_id in self._handles or request_id in self._requests:
                    request_id = next(self._ids)
            elif not _hashable(request_id):
                raise ValueError(f"`request_id` must be hashable, got {type(request_id).__name__}")
            elif request_id in self._handles or request_id in self._requests:
                raise ValueError(f"`request_id` {request_id!r} is already in use")
            handle = RequestHandle(self, request_id, spec.prompt)
            self._handles[request_id] = handle
        self._command(("add", Request(request_id, spec)))
        return handle

    def _command(self, command: tuple) -> None:
        with self._wake:
            self._commands.put(command)
            self._wake.notify()

    def shutdown(self, wait: bool = True, timeout: Optional[float] = None) -> None:
        """Stop the background loop: requests not finished yet end with ``finish_reason="aborted"`` (their handles
        return). ``wait``: join the thread (at most ``timeout`` seconds). Idempotent."""
        thread = self._thread
        if thread is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if wait and thread is not threading.current_thread():
            thread.join(timeout)

    def _drain_commands(self) -> None:
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._admit(payload)
            elif kind == "abort":
                request = self._requests.get(payload)
                if request is not None and not request.finished:
                    self._finish(request, FinishReason.ABORTED.value)
                    self._reports.append(request)

    def _deliver(self, outputs: list) -> None:
        for output in outputs:
            handle = self._handles.get(output.request_id)
            if handle is None:
                continue
            handle._put(output)
            if output.finished:
                del self._handles[output.request_id]
                self._requests.pop(output.request_id, None)

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._wake:
                        while not self._stopping and self._commands.empty() and not self.scheduler.has_work() \
                                and not self._reports:
                            self._wake.wait()
                        stopping = self._stopping
                    self._drain_commands()
                    if stopping:
                        break
                    self._deliver(self._step())
        except BaseException as error:  # noqa: BLE001  (every waiting caller must learn it; nobody may hang)
            self._failure = error
        finally:
            with self._wake:
                self._stopping = True
            self._drain_commands()
            message = None if self._failure is None else f"the Engine's loop failed: {self._failure!r}"
            left = []
            for request in list(self._requests.values()):
                if not request.finished:
                    if message is None:
                        self._finish(request, FinishReason.ABORTED.value)
                    else:
                        self._finish(request, FinishReason.ERROR.value, message)
                left.append(request.output())
            self._deliver(left)
            for handle in list(self._handles.values()):  # submitted but never admitted (cannot happen; be safe)
                handle._put(RequestOutput(handle.request_id, list(handle.prompt_ids), [], finished=True,
                                          finish_reason=FinishReason.ABORTED.value))
            self._handles.clear()
            self._thread = None


class RequestHandle:
    """A request submitted to a background Engine: :meth:`result` waits for the end; iterating yields its tokens
    as they are generated (ending when the request does); :meth:`abort` stops it."""

    def __init__(self, engine: BackgroundLoop, request_id: Hashable, prompt_ids: list):
        self.engine = engine
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self._tokens: "queue.SimpleQueue" = queue.SimpleQueue()
        self._done = threading.Event()
        self._output: Optional[RequestOutput] = None

    def _put(self, output: RequestOutput) -> None:
        if self._done.is_set():
            return
        for token in output.new_tokens:
            self._tokens.put(token)
        if output.finished:
            self._output = output
            self._done.set()
            self._tokens.put(None)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: Optional[float] = None) -> RequestOutput:
        """The final :class:`RequestOutput`; raises TimeoutError after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id!r} did not finish within {timeout} s")
        return self._output

    def __iter__(self) -> Iterator[int]:
        while True:
            token = self._tokens.get()
            if token is None:
                return
            yield token

    def abort(self) -> None:
        if not self._done.is_set():
            try:
                self.engine.abort(self.request_id)
            except ValueError:  # finished meanwhile
                pass
