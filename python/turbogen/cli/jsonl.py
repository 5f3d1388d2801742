"""``turbogen generate --input``: prompts from a JSONL file, one result per row, written in input order.

Each non-blank input line is a JSON object holding its prompt: a list of token ids under ``input_ids``,
or else a string under the text field (``text``, or ``--text-field``); a row with both is generated from
its ids, as :class:`~turbogen.integrations.batch.BatchGenerator` does. The
output has one JSON object per input row, in input order: the row's own fields, unchanged, followed by
``generated_text``, ``generated_token_ids``, ``finish_reason`` (``stop``, ``length`` or ``error``) and
``error`` (empty unless the row failed).

The whole file is read and checked before anything is loaded or generated, so a malformed line fails the
run at once, naming its line number, instead of hours into it. A row whose prompt is well-formed but
unusable (empty text, longer than ``--max-prompt-tokens``, ids outside the vocabulary) is not fatal: it is
written with finish_reason ``error`` and the reason, and the run goes on.

Rows are generated in micro-batches by :class:`turbogen.integrations.batch.BatchGenerator`, in this
process or, with ``--ray N``, by a pool of N Ray actors on a local cluster
(:func:`turbogen.integrations.ray.generate_dataset`). Each row's sampling seed comes from its key (the
prompt, or ``--key-field``), never from its position, so both modes write the same file. Only what
generation reads travels to Ray (the prompt, the seed key and the row's number); the results are joined
back to the rows here, so the rows' other fields never go through Arrow's type inference and come back
exactly as they were read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TextIO

# The fields every output row gets, in this order, after the row's own fields.
OUTPUT_FIELDS = ("generated_text", "generated_token_ids", "finish_reason", "error")
# Where a row may hold its prompt as token ids instead of text.
IDS_FIELD = "input_ids"
# The column that carries each row's number through Ray, whose output order is not the input's.
ROW_NUMBER_FIELD = "turbogen_row_number"


@dataclasses.dataclass(frozen=True)
class InputRows:
    """A checked input file: the rows as read, and per row the request generation reads.

    ``requests[i]`` holds row ``i``'s prompt under exactly one of :data:`IDS_FIELD` (a list of ints) and
    ``text_field`` (a string), and its seed key under ``key_field`` when one is set.
    """

    rows: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    text_field: str
    key_field: Optional[str]


def read_rows(path: str, *, text_field: str = "text", key_field: Optional[str] = None) -> InputRows:
    """Reads and checks the JSONL file ``path`` (UTF-8; blank lines are skipped).

    Raises ValueError naming the file and the line number if a line is not JSON, is not a JSON object,
    has no prompt (neither ``text_field`` nor :data:`IDS_FIELD`), has a prompt of the wrong type (text
    that is not a string, ids that are not a list of integers), lacks ``key_field`` when one is given or
    holds a key that is not a string, an integer or a list of integers, or of another of these kinds than
    the first row's key, or already has one of the :data:`OUTPUT_FIELDS` (which the output would silently
    overwrite); and if the file holds no rows at all. Raises OSError if it cannot be read.
    """
    rows, requests = [], []
    first_key: Optional[tuple[str, int]] = None  # (kind, line) of the first row's key
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                request = _request(row, text_field, key_field)
                if key_field is not None:
                    # One column of one type: Ray's Arrow blocks cannot hold a column of mixed types.
                    kind = _key_kind(request[key_field])
                    first_key = first_key or (kind, number)
                    if kind != first_key[0]:
                        raise ValueError(f"field {key_field!r} (--key-field) is {_KEY_KINDS[kind]} here but "
                                         f"{_KEY_KINDS[first_key[0]]} on line {first_key[1]}: keys must all "
                                         "be of one kind")
            except ValueError as error:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}, line {number}: {error}") from None
            rows.append(row)
            requests.append(request)
    if not rows:
        raise ValueError(f"{path} holds no rows: expected one JSON object per line")
    return InputRows(rows, requests, text_field, key_field)


def _request(row: Any, text_field: str, key_field: Optional[str]) -> dict[str, Any]:
    """What generation reads from one parsed line; ValueError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(row)}")
    taken = [field for field in OUTPUT_FIELDS if field in row]
    if taken:
        raise ValueError(f"the row already has the output field {taken[0]!r}, which generation writes")
    if IDS_FIELD in row:
        ids = row[IDS_FIELD]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"field {IDS_FIELD!r} must be a list of integers")
        request = {IDS_FIELD: ids}
    elif text_field in row:
        prompt = row[text_field]
        if not isinstance(prompt, str):
            raise ValueError(f"field {text_field!r} must be a string, got {_json_type(prompt)}")
        request = {text_field: prompt}
    else:
        raise ValueError(f"no prompt: the row has neither {text_field!r} (see --text-field) nor {IDS_FIELD!r}")
    if key_field is not None:
        if row.get(key_field) is None:
            raise ValueError(f"no {key_field!r} field (--key-field)")
        key = row[key_field]
        if _key_kind(key) is None:
            raise ValueError(f"field {key_field!r} (--key-field) must be a string, an integer or a list of "
                             f"integers, got {_json_type(key)}")
        request[key_field] = key
    return request


_KEY_KINDS = {"str": "a string", "int": "an integer", "ids": "a list of integers"}


def _key_kind(key: Any) -> Optional[str]:
    """The kind of a seed key that stable_row_seed hashes (``str``, ``int`` or ``ids``), None for any other."""
    if isinstance(key, str):
        return "str"
    if isinstance(key, int) and not isinstance(key, bool):
        return "int"
    if isinstance(key, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in key):
        return "ids"
    return None


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def output_row(row: Mapping[str, Any], generated: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with the :data:`OUTPUT_FIELDS` of ``generated`` appended, as plain JSON values (a Ray batch
    holds numpy strings and arrays)."""
    return {**row,
            "generated_text": str(generated["generated_text"]),
            "generated_token_ids": [int(token) for token in generated["generated_token_ids"]],
            "finish_reason": str(generated["finish_reason"]),
            "error": str(generated["error"])}


class InOrderWriter:
    """Writes output rows in input order while their results arrive in any order.

    :meth:`put` takes the result of row ``i``; each row is written as soon as every row before it has
    been, so the output grows as generation goes and holds only results that will not move.
    """

    def __init__(self, stream: TextIO, rows: Sequence[Mapping[str, Any]]):
        self.stream = stream
        self.rows = rows
        self.written = 0
        self.errors = 0
        self._waiting: dict[int, dict[str, Any]] = {}

    def put(self, index: int, generated: Mapping[str, Any]) -> None:
        if not 0 <= index < len(self.rows) or index < self.written or index in self._waiting:
            raise ValueError(f"row {index} is not a pending row of {len(self.rows)}")
        self._waiting[index] = output_row(self.rows[index], generated)
        while self.written in self._waiting:
            row = self._waiting.pop(self.written)
            self.errors += row["finish_reason"] == "error"
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.written += 1

    def put_batch(self, numbers: Sequence[int], results: Sequence[Mapping[str, Any]]) -> None:
        """:meth:`put` for each row number and its result."""
        for number, result in zip(numbers, results, strict=True):
            self.put(number, result)

    @property
    def complete(self) -> bool:
        return self.written == len(self.rows)


@contextlib.contextmanager
def open_output(path: str) -> Iterator[TextIO]:
    """The stream to write ``path`` through: standard output for ``-``; otherwise ``PATH.partial``, renamed
    to ``path`` when the block succeeds and removed when it fails, so that ``path`` never holds a
    truncated run (and an existing file there is replaced only by a complete one).

    Raises ValueError before anything is written if ``path`` is a directory or its directory is missing.
    """
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"--output {path!r} is a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"--output {path!r}: directory {directory!r} does not exist")
    partial = path + ".partial"
    try:
        with open(partial, "w", encoding="utf-8") as stream:
            yield stream
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise
    os.replace(partial, path)


# One finished batch: (row numbers, per-row results with the OUTPUT_FIELDS).
BatchCallback = Callable[[Sequence[int], Sequence[Mapping[str, Any]]], None]


def generate_locally(generator: Any, requests: Sequence[Mapping[str, Any]], batch_size: int,
                     on_batch: BatchCallback) -> None:
    """Runs ``requests`` through ``generator`` (a BatchGenerator) ``batch_size`` rows at a time, in order,
    handing each finished micro-batch to ``on_batch``."""
    for start in range(0, len(requests), batch_size):
        chunk = requests[start:start + batch_size]
        on_batch(range(start, start + len(chunk)), generator.generate_rows(chunk))


@contextlib.contextmanager
def local_ray_cluster(actors: int) -> Iterator[None]:
    """A local, loopback-only Ray cluster for ``actors`` actors of one CPU or more
    (:func:`turbogen.integrations.ray.init_local_cluster`), shut down on leaving; a Ray instance this
    process already runs (a notebook, a test) is used as is and left running.

    Raises ImportError saying how to install Ray if it is missing.
    """
    from ..integrations import ray as turbogen_ray

    if not turbogen_ray.ray_data_available():
        raise ImportError("--ray needs Ray Data: pip install 'turbogen[ray]'")
    import ray

    if ray.is_initialized():
        yield
        return
    # At least one CPU per actor, so that all of them are scheduled (Ray would wait for CPUs that never
    # come); more actors than cores then share the cores.
    turbogen_ray.init_local_cluster(num_cpus=max(actors, os.cpu_count() or 1), log_to_driver=False,
                                    logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def generate_with_ray(requests: Sequence[Mapping[str, Any]], *, actors: int, batch_size: int,
                      on_batch: BatchCallback, **generator_kwargs: Any) -> None:
    """Runs ``requests`` on ``actors`` Ray actors (:func:`turbogen.integrations.ray.generate_dataset`, each
    actor a BatchGenerator built from ``generator_kwargs``) in Ray batches of ``batch_size`` rows, handing
    each finished batch to ``on_batch`` as it arrives, in any order, with its row numbers. The cluster's CPUs
    are shared evenly among the actors (at least one each), which run that many threads.

    Needs a running Ray instance (:func:`local_ray_cluster`).
    """
    import ray.data

    from ..integrations import ray as turbogen_ray

    cpus_per_actor = max(1, int(ray.cluster_resources().get("CPU", 1)) // actors)
    items = [{ROW_NUMBER_FIELD: number, **request} for number, request in enumerate(requests)]
    context = ray.data.DataContext.get_current()
    # The command draws its own progress bar; Ray Data's would write over it, and its per-run notes
    # (execution plan, where its logs are) would surround it.
    progress_bars, context.enable_progress_bars = context.enable_progress_bars, False
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)
    try:
        dataset = turbogen_ray.generate_dataset(ray.data.from_items(items), actors=actors, batch_size=batch_size,
                                                num_cpus=cpus_per_actor, **generator_kwargs)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            numbers = [int(number) for number in batch[ROW_NUMBER_FIELD]]
            on_batch(numbers, [{field: batch[field][index] for field in OUTPUT_FIELDS}
                               for index in range(len(numbers))])
    finally:
        context.enable_progress_bars = progress_bars
        data_logger.setLevel(level)
