"""Continuous batching (issue 10): turbogen's Engine against padded generate() and transformers' continuous
batching, on one mixed workload, side by side in one run, in both transformers environments.

    python bench/e2e/bench_engine.py                  # full: both models, 2 then 1 thread, batch sweep, 3 rounds
    python bench/e2e/bench_engine.py --quick          # a few minutes: 24 requests, 2 threads, a short sweep
    python bench/e2e/bench_engine.py --models=tiny --threads=2 --rounds=5 --json=out.json

Run it with any Python: it only orchestrates. The measurements run in worker processes, one per (environment,
thread count), started with ``--python457=`` (default ``.venv/bin/python``, transformers 4.57) and
``--python5=`` (default ``.venv-hf5/bin/python``, transformers 5.x) next to this repository; the workers take
turns (only one computes at a time), so every system sees the same machine.

The workload (the issue's): ``--requests`` (64) requests, prompt lengths uniform in [4, 256] and max_new_tokens
uniform in [8, 256], prompt tokens uniform over the non-special ids, all drawn from ``--seed`` (0); greedy search
(no processors) with the model's EOS (id 2) and pad (id 0). Models: ``tiny`` = the tiny Llama of the end-to-end
targets (:class:`turbogen.cli.benchmark.ModelSpec`: random weights, vocabulary 32000, hidden 256, 4 layers, 8
heads over 4 KV heads) and ``embedded`` = :func:`turbogen.models.load_default_model` (trained, vocabulary 2048,
same shape otherwise); float32, under ``torch.inference_mode``; the model's own generation defaults are replaced
by the greedy config (so no generate() fills in sampling from them).

Counted tokens, identical for every system: each request's tokens after its prompt, up to and including its first
EOS, at most its max_new_tokens. Rates are counted tokens / wall seconds of the whole workload (prefills
included, model loading excluded).

Systems (``--systems=``, default all):

* ``engine``: :func:`turbogen.generate_batch` (the continuous-batching Engine), every request with its own
  max_new_tokens, with transformers 4.57; ``engine-hf5``: the same with transformers 5.x (whose model forward
  differs), the Engine the 5.x systems are compared with; ``block_size`` 16, the Engine's own defaults otherwise (``--engine-kwargs=JSON`` adds more).
  Also reports the Engine's peak KV memory (blocks in use x block bytes) against the bytes of the tokens it held
  at that moment, when the Engine exposes its cache (see ``engine_kv_stats``).
* ``tg-padded``: turbogen's ``generate()`` on left-padded batches; ``tg-paged``: the same with
  ``cache_implementation="paged"`` (left padding never enters the cache).
* ``hf457-padded`` / ``hf5-padded``: transformers' ``model.generate`` on the same padded batches, 4.57 / 5.x.
* ``hf5-cb``: transformers 5.x continuous batching: ``model.continuous_batching_context_manager`` (what
  ``generate_batch`` runs) with one ``add_request(prompt, max_new_tokens=...)`` per request, so every request
  keeps its own limit (``generate_batch`` itself takes one max_new_tokens for all);
  ``ContinuousBatchingConfig(page_size=16, num_blocks=<enough for the whole workload>,
  max_batch_tokens=--max-batch-tokens (512))``. Its manager is created and started inside the timed call, as
  ``generate_batch`` does.
* ``hf457-cb``: transformers 4.57's ``generate_batch`` with ``num_blocks`` / ``block_size`` / ``max_batch_tokens``
  given: run once on 4 requests to record that it fails on a CPU (its memory probe reads CUDA's figures even
  with ``num_blocks`` given); never timed.

Padded batches (the fair choice for a padded generate()): requests are cut into batches of ``B`` either in
arrival order (``arrival``) or sorted by max_new_tokens then prompt length (``sorted``: each batch holds similar
limits, the best case for padding). Each batch is one generate() call with max_new_tokens = the batch's largest
and a per-row stopping criterion (:class:`RowLimits`) that finishes each row at its own limit, so the call ends as
soon as every row has met its EOS or its limit (rather than running every row to the batch's largest limit);
tokens past a row's limit are never counted. The sweep (one run each) tries every ``B`` of ``--batches`` in the
first order of ``--orders``, then each further order at that system's best ``B`` (a full grid costs too much on
this CPU); each padded system's best (B, order) goes into the timed rounds: "at its best batch size" means its
best configuration on this workload. With one (B, order) only there is no sweep.

Timing: a warm-up call of every system on 4 short requests (16-token prompts, 4 new tokens), the sweep, then
``--rounds`` rounds in which the systems take turns; medians (and best) of the rounds. The tables print the load average before and after
(``os.getloadavg``), the thread counts and the versions. ``--json=FILE`` writes every measurement.

``--quick``: 24 requests (the same distributions), 2 threads only, batches 8 and 24 in sorted order only, one
round: checks everything runs, in a few minutes on a quiet machine; its numbers are indicative at best.
Full mode (the defaults) runs both models at 2 then 1 thread: plan on the order of an hour on this CPU.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parents[2]
ALL_SYSTEMS = ("engine", "engine-hf5", "tg-padded", "tg-paged", "hf457-padded", "hf5-padded", "hf5-cb", "hf457-cb")
PADDED_SYSTEMS = ("tg-padded", "tg-paged", "hf457-padded", "hf5-padded")
ENVIRONMENT = {"engine": "457", "tg-padded": "457", "tg-paged": "457", "hf457-padded": "457", "hf457-cb": "457",
               "engine-hf5": "5", "hf5-padded": "5", "hf5-cb": "5"}
BLOCK_SIZE = 16
# The throughput targets: the Engine's rate over each system's, at least.
TARGETS = {"hf457-padded": 2.0, "hf5-padded": 2.0, "tg-padded": 1.5, "hf5-cb": 2.5}
# The Engine run each system is compared with: the one in the same transformers environment (the model's own
# forward differs between 4.57 and 5.x).
ENGINE_OF_ENVIRONMENT = {"457": "engine", "5": "engine-hf5"}
OPTIONS = ("--quick", "--models", "--threads", "--rounds", "--requests", "--seed", "--systems", "--batches",
           "--orders", "--json", "--python457", "--python5", "--engine-kwargs", "--max-batch-tokens", "--serve",
           "-h", "--help")


# ----------------------------------------------------------------------------------------------------------------
# The workload (shared by the orchestrator and the workers: plain Python, no torch)
# ----------------------------------------------------------------------------------------------------------------


def make_workload(num_requests: int, seed: int, vocab_size: int, first_id: int = 3):
    """``[(prompt ids, max_new_tokens)]``: prompts of 4..256 tokens over ids [first_id, vocab_size), limits
    8..256, from ``seed`` (Python's own generator: the same lists in every environment)."""
    import random

    rng = random.Random(seed)
    requests = []
    for _ in range(num_requests):
        length = rng.randint(4, 256)
        limit = rng.randint(8, 256)
        requests.append(([rng.randrange(first_id, vocab_size) for _ in range(length)], limit))
    return requests


def counted(tokens, limit: int, eos: int) -> list[int]:
    """A request's counted tokens: at most ``limit``, cut after the first ``eos``."""
    tokens = list(tokens)[:limit]
    if eos in tokens:
        tokens = tokens[:tokens.index(eos) + 1]
    return tokens


def padded_batches(requests, batch: int, order: str) -> list[list[int]]:
    """Request indices per padded batch: arrival order, or sorted by (max_new_tokens, prompt length)."""
    indices = list(range(len(requests)))
    if order == "sorted":
        indices.sort(key=lambda i: (requests[i][1], len(requests[i][0])))
    elif order != "arrival":
        raise ValueError(f"order must be 'arrival' or 'sorted', got {order!r}")
    return [indices[i:i + batch] for i in range(0, len(indices), batch)]


# ----------------------------------------------------------------------------------------------------------------
# Worker side (runs in one transformers environment, one thread count)
# ----------------------------------------------------------------------------------------------------------------


class Worker:
    """Holds the models and workloads of one process and runs one system over a workload per command."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.models: dict[str, object] = {}

    def model(self, name: str):
        if name not in self.models:
            from transformers import GenerationConfig

            if name == "tiny":
                from turbogen.cli.benchmark import ModelSpec

                model = ModelSpec().build()
            elif name == "embedded":
                from turbogen.models import load_default_model

                model = load_default_model()[0].eval()
            else:
                raise ValueError(f"unknown model {name!r}")
            model.generation_config = GenerationConfig(do_sample=False, eos_token_id=2, pad_token_id=0,
                                                       bos_token_id=1, max_new_tokens=16)
            self.models[name] = model
        return self.models[name]

    def copy(self, name: str, model):
        key = name + "/cb"
        if key not in self.models:
            import copy

            self.models[key] = copy.deepcopy(model)
        return self.models[key]

    def run(self, command: dict) -> dict:
        model = self.model(command["model"])
        requests = make_workload(command["requests"], command["seed"], model.config.vocab_size)
        if command.get("first"):  # the warm-up: a few short requests
            requests = [(prompt[:16], min(limit, 4)) for prompt, limit in requests[:command["first"]]]
        system = command["system"]
        if system in ("hf5-cb", "hf457-cb"):
            # transformers' continuous batching switches the model's attention implementation (and 4.57 leaves it
            # switched when it fails): it gets its own copy of the model.
            model = self.copy(command["model"], model)
        torch = self.torch
        extra: dict = {}
        start = time.perf_counter()
        # transformers' continuous batching runs its loop in a thread of its own (outside this inference mode,
        # where inference tensors made here cannot be updated): it gets no_grad, as its generate_batch does.
        with (torch.no_grad() if system.endswith("-cb") else torch.inference_mode()):
            if system in PADDED_SYSTEMS:
                outputs = self.padded(model, requests, system, command["batch"], command["order"])
            elif system in ("engine", "engine-hf5"):
                outputs, extra = self.engine(model, requests, command.get("engine_kwargs") or {})
            elif system == "hf5-cb":
                outputs = self.transformers_cb(model, requests, command["max_batch_tokens"])
            elif system == "hf457-cb":
                return self.transformers_457_cb(model, requests[:4])
            else:
                raise ValueError(f"unknown system {system!r}")
        seconds = time.perf_counter() - start
        tokens = [counted(out, limit, 2) for out, (_, limit) in zip(outputs, requests)]
        return dict(seconds=seconds, tokens=tokens, counted=sum(map(len, tokens)),
                    eos_finished=sum(1 for t in tokens if t and t[-1] == 2), **extra)

    # -- padded generate() ---------------------------------------------------------------------------------------

    def padded(self, model, requests, system: str, batch: int, order: str) -> list[list[int]]:
        torch = self.torch
        if system.startswith("tg"):
            from turbogen import generate as turbogen_generate

            def generate(**kwargs):
                if system == "tg-paged":
                    kwargs["cache_implementation"] = "paged"
                return turbogen_generate(model, **kwargs)
        else:
            generate = model.generate
        outputs: list = [None] * len(requests)
        for indices in padded_batches(requests, batch, order):
            prompts = [requests[i][0] for i in indices]
            limits = [requests[i][1] for i in indices]
            width = max(map(len, prompts))
            input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, prompt in enumerate(prompts):
                input_ids[row, width - len(prompt):] = torch.tensor(prompt)
                attention_mask[row, width - len(prompt):] = 1
            sequences = generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max(limits),
                                 do_sample=False, eos_token_id=2, pad_token_id=0,
                                 stopping_criteria=_stopping_list(RowLimits(width, limits)))
            for row, i in enumerate(indices):
                outputs[i] = sequences[row, width:].tolist()
        return outputs

    # -- turbogen Engine ---------------------------------------------------------------------------------------

    def engine(self, model, requests, engine_kwargs: dict):
        import turbogen

        kwargs = dict(block_size=BLOCK_SIZE, progress_bar=False, **engine_kwargs)
        results = turbogen.generate_batch(model, [prompt for prompt, _ in requests],
                                          max_new_tokens=[limit for _, limit in requests], do_sample=False,
                                          eos_token_id=2, pad_token_id=0, **kwargs)
        outputs = [list(result.generated_tokens) for result in results]
        return outputs, engine_kv_stats(results)

    # -- transformers continuous batching ------------------------------------------------------------------------

    def transformers_cb(self, model, requests, max_batch_tokens: int) -> list[list[int]]:
        from transformers import ContinuousBatchingConfig

        blocks = sum(math.ceil((len(p) + n) / BLOCK_SIZE) for p, n in requests) + 2 * len(requests)
        config = ContinuousBatchingConfig(page_size=BLOCK_SIZE, num_blocks=blocks, max_batch_tokens=max_batch_tokens)
        results = {}
        with model.continuous_batching_context_manager(generation_config=model.generation_config,
                                                       continuous_batching_config=config) as manager:
            ids = [manager.add_request(prompt, max_new_tokens=limit, eos_token_id=2) for prompt, limit in requests]
            while len(results) < len(ids):
                result = manager.get_result(timeout=1)
                if result is not None and result.is_finished():
                    results[result.request_id] = result
                elif result is None and not manager.is_running():
                    break
        missing = [i for i in ids if i not in results]
        errors = [results[i].error for i in ids if i in results and results[i].error]
        if missing or errors:
            raise RuntimeError(f"transformers continuous batching: {len(missing)} request(s) missing, errors "
                               f"{errors[:2]}")
        return [list(results[i].generated_tokens) for i in ids]

    def transformers_457_cb(self, model, requests) -> dict:
        """transformers 4.57's generate_batch with the cache sized explicitly: its error (it logs it from its
        generation thread and returns no results)."""
        import logging

        import transformers
        from transformers import GenerationConfig

        class Capture(logging.Handler):
            def __init__(self):
                super().__init__()
                self.messages = []

            def emit(self, record):
                message = record.getMessage()
                if record.exc_info and record.exc_info[1] is not None:
                    message += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
                self.messages.append(message)

        capture = Capture()
        cb_logger = logging.getLogger("ContinuousBatchingLogger")
        cb_logger.addHandler(capture)
        config = GenerationConfig(do_sample=False, max_new_tokens=8, eos_token_id=2, pad_token_id=0,
                                  num_blocks=64, block_size=BLOCK_SIZE, max_batch_tokens=256)
        try:
            results = model.generate_batch([prompt for prompt, _ in requests], generation_config=config)
            error = None
        except Exception as exception:  # what the report needs is the error, raised or logged
            results, error = {}, f"{type(exception).__name__}: {exception}"
        finally:
            cb_logger.removeHandler(capture)
        return dict(transformers=transformers.__version__, results=len(results), raised=error,
                    logged=capture.messages[:3])


def _stopping_list(criterion):
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([criterion])


class RowLimits:
    """Stopping criterion: row i is done once it has ``limits[i]`` new tokens after a ``prompt_width`` prompt."""

    def __new__(cls, *args, **kwargs):
        from transformers import StoppingCriteria

        class _RowLimits(StoppingCriteria):
            def __init__(self, prompt_width: int, limits: list[int]):
                import torch

                self.prompt_width = prompt_width
                self.limits = torch.tensor(limits)

            def __call__(self, input_ids, scores, **kwargs):
                return (input_ids.shape[1] - self.prompt_width) >= self.limits.to(input_ids.device)

        return _RowLimits(*args, **kwargs)


def engine_kv_stats(results) -> dict:
    """The Engine's KV memory figures, if it reports them: peak bytes of blocks in use, the bytes of the tokens
    held at that step, their ratio, and the bytes allocated for the pool. Filled in from the Engine's API."""
    stats = getattr(results, "kv_stats", None)
    if stats is None:
        return {}
    return {"kv": {key: value for key, value in dict(stats).items() if isinstance(value, (int, float, str))}}


def serve() -> None:
    """Worker loop: one JSON command per stdin line, one JSON answer per line on the original stdout (everything
    else the libraries print goes to stderr)."""
    answer_stream = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    worker = None
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "init":
                worker = Worker(command["threads"])
                import torch
                import transformers

                answer = dict(transformers=transformers.__version__, torch=torch.__version__,
                              threads=torch.get_num_threads(), python=sys.executable)
            elif command["cmd"] == "run":
                answer = worker.run(command)
            elif command["cmd"] == "quit":
                break
            else:
                answer = dict(error=f"unknown command {command['cmd']!r}")
        except Exception as error:  # reported to the orchestrator, which reports the system as failed
            import traceback

            traceback.print_exc()
            answer = dict(error=f"{type(error).__name__}: {error}"[:400])
        answer_stream.write(json.dumps(answer) + "\n")
        answer_stream.flush()


# ----------------------------------------------------------------------------------------------------------------
# Orchestrator side
# ----------------------------------------------------------------------------------------------------------------


class Process:
    """One worker process (environment, threads)."""

    def __init__(self, python: str, threads: int):
        env = dict(os.environ, TURBOGEN_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   TOKENIZERS_PARALLELISM="false")
        self.process = subprocess.Popen([python, str(pathlib.Path(__file__).resolve()), "--serve"], cwd=str(REPO),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        stderr=open(f"/tmp/bench_engine_worker_{os.getpid()}_{threads}_"
                                                    f"{pathlib.Path(python).parent.parent.name}.log", "w"))
        self.info = self.ask(dict(cmd="init", threads=threads))

    def ask(self, command: dict) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            return dict(error=f"worker exited (code {self.process.poll()})")
        return json.loads(line)

    def close(self):
        try:
            self.ask(dict(cmd="quit"))
        except (BrokenPipeError, ValueError):
            pass
        self.process.wait(timeout=30)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def parse(argv: list[str]) -> dict:
    flags = {arg.split("=", 1)[0]: (arg.split("=", 1)[1] if "=" in arg else "") for arg in argv}
    unknown = set(flags) - set(OPTIONS)
    if unknown:
        raise SystemExit(f"unknown arguments {sorted(unknown)}; see --help")
    if "-h" in flags or "--help" in flags:
        print(__doc__)
        raise SystemExit(0)
    quick = "--quick" in flags

    def listed(name, default):
        return [item for item in flags.get(name, default).split(",") if item]

    settings = dict(
        serve="--serve" in flags,
        models=listed("--models", "tiny,embedded"),
        threads=[int(t) for t in listed("--threads", "2" if quick else "2,1")],
        rounds=int(flags.get("--rounds", 1 if quick else 3)),
        requests=int(flags.get("--requests", 24 if quick else 64)),
        seed=int(flags.get("--seed", 0)),
        systems=listed("--systems", ",".join(ALL_SYSTEMS)),
        batches=[int(b) for b in listed("--batches", "8,24" if quick else "4,8,16,32,64")],
        orders=listed("--orders", "sorted" if quick else "sorted,arrival"),
        json=flags.get("--json"),
        python457=flags.get("--python457", str(REPO / ".venv/bin/python")),
        python5=flags.get("--python5", str(REPO / ".venv-hf5/bin/python")),
        engine_kwargs=json.loads(flags.get("--engine-kwargs", "{}")),
        max_batch_tokens=int(flags.get("--max-batch-tokens", 512)),
    )
    if set(settings["systems"]) - set(ALL_SYSTEMS):
        raise SystemExit(f"--systems must be among {ALL_SYSTEMS}")
    return settings


def rate(answer: dict) -> Optional[float]:
    return answer["counted"] / answer["seconds"] if "counted" in answer else None


def describe(answer: dict) -> str:
    if "error" in answer:
        return "FAILED " + answer["error"]
    return f"{rate(answer):8.1f} tok/s ({answer['counted']} tokens, {answer['seconds']:.2f} s, " \
           f"{answer['eos_finished']} ended at EOS)"


def run_threads(settings: dict, threads: int, results: list) -> None:
    environments = {}
    needed = {ENVIRONMENT[s] for s in settings["systems"]}
    for env in sorted(needed):
        python = settings["python457"] if env == "457" else settings["python5"]
        process = Process(python, threads)
        if "error" in process.info:
            print(f"  environment {env}: FAILED to start: {process.info['error']}", flush=True)
            continue
        environments[env] = process
        print(f"  worker {env}: transformers {process.info['transformers']}, torch {process.info['torch']}, "
              f"{process.info['threads']} torch thread(s), {process.info['python']}", flush=True)
    try:
        for model in settings["models"]:
            run_model(settings, threads, model, environments, results)
    finally:
        for process in environments.values():
            process.close()


def run_model(settings: dict, threads: int, model: str, environments: dict, results: list) -> None:
    base = dict(cmd="run", model=model, requests=settings["requests"], seed=settings["seed"],
                max_batch_tokens=settings["max_batch_tokens"], engine_kwargs=settings["engine_kwargs"])
    systems = [s for s in settings["systems"] if ENVIRONMENT[s] in environments]
    print(f"\n== {model}, {threads} thread(s), {settings['requests']} requests, load {load()}", flush=True)

    def ask(system, **extra):
        answer = environments[ENVIRONMENT[system]].ask(dict(base, system=system, **extra))
        record = dict(model=model, threads=threads, system=system, **extra, **answer)
        results.append(record)
        return answer

    # transformers 4.57's continuous batching on CPU: the error, once.
    if "hf457-cb" in systems:
        answer = ask("hf457-cb")
        print(f"  hf457-cb (transformers {answer.get('transformers')} generate_batch, num_blocks given): "
              f"{answer.get('results')} result(s); raised: {answer.get('raised')}; logged: "
              f"{answer.get('logged')}", flush=True)
    timed = [s for s in systems if s != "hf457-cb"]

    # Warm-up: every system on the first 4 requests.
    for system in timed:
        ask(system, first=4, batch=4, order="arrival", phase="warmup")

    # Sweep of the padded systems' batch size in the first order, then the other orders at each system's best batch
    # size: one run each (none when there is one configuration only).
    best: dict[str, dict] = {}
    padded = [s for s in timed if s in PADDED_SYSTEMS]

    def sweep(system, batch, order):
        answer = ask(system, batch=batch, order=order, phase="sweep")
        print(f"  sweep {system:13s} B={batch:<3d} {order:8s} {describe(answer)}", flush=True)
        if rate(answer) and (system not in best or rate(answer) > best[system]["rate"]):
            best[system] = dict(batch=batch, order=order, rate=rate(answer))

    if len(settings["batches"]) * len(settings["orders"]) == 1:
        best = {system: dict(batch=settings["batches"][0], order=settings["orders"][0]) for system in padded}
    else:
        for batch in settings["batches"]:
            for system in padded:
                sweep(system, batch, settings["orders"][0])
        for order in settings["orders"][1:]:
            for system in padded:
                if system in best:
                    sweep(system, best[system]["batch"], order)

    # Timed rounds, systems in turns.
    configs = {}
    for system in timed:
        if system in PADDED_SYSTEMS:
            if system in best:
                configs[f"{system}[B={best[system]['batch']},{best[system]['order']}]"] = (
                    system, dict(batch=best[system]["batch"], order=best[system]["order"]))
        else:
            configs[system] = (system, {})
    rounds: dict[str, list[dict]] = {name: [] for name in configs}
    load_before = load()
    for index in range(settings["rounds"]):
        for name, (system, extra) in configs.items():
            answer = ask(system, phase="round", round=index, **extra)
            rounds[name].append(answer)
            print(f"  round {index} {name:30s} {describe(answer)}", flush=True)
    load_after = load()

    # Summary table.
    reference = next((rs[0]["tokens"] for name, rs in rounds.items() if name == "engine" and "tokens" in rs[0]),
                     None)
    if reference is None:
        reference = next((rs[0]["tokens"] for name, rs in rounds.items() if name.startswith("tg-padded")
                          and "tokens" in rs[0]), None)
    medians = {}
    for name, answers in rounds.items():
        good = [a for a in answers if "counted" in a]
        if good:
            medians[name] = statistics.median(rate(a) for a in good)
    print(f"\n{model}, {threads} thread(s), {settings['requests']} requests, {settings['rounds']} round(s), load "
          f"{load_before} -> {load_after}")
    print("\n| system | tok/s median (best) | counted tokens | ended at EOS | same tokens as reference | "
          "engine / this (target) |")
    print("|---|---|---|---|---|---|")
    for name, answers in rounds.items():
        good = [a for a in answers if "counted" in a]
        if not good:
            print(f"| {name} | failed: {answers[0].get('error', '?')[:80]} | | | | |")
            continue
        same = "-" if reference is None else \
            f"{sum(a == b for a, b in zip(good[0]['tokens'], reference))}/{len(reference)}"
        system = name.split("[")[0]
        target = TARGETS.get(system)
        engine = medians.get(ENGINE_OF_ENVIRONMENT[ENVIRONMENT[system]]) or medians.get("engine")
        versus = (f"{engine / medians[name]:.2f}" if engine else "-") + (f" (>= {target})" if target else "")
        print(f"| {name} | {medians[name]:.1f} ({max(rate(a) for a in good):.1f}) | {good[0]['counted']} | "
              f"{good[0]['eos_finished']} | {same} | {versus} |")
    kv = next((a["kv"] for a in rounds.get("engine", []) if "kv" in a), None)
    if kv:
        ratio = kv.get("peak_ratio")
        print(f"\nEngine KV memory (target: peak KV bytes <= 1.1 x the bytes of the tokens held then): peak "
              f"{kv.get('peak_kv_bytes')} B in blocks for {kv.get('tokens_held_at_peak')} tokens held "
              f"({kv.get('token_bytes_at_peak')} B): ratio {ratio if ratio is None else round(ratio, 3)}; pool "
              f"{kv.get('kv_pool_bytes')} B, {kv.get('num_preemptions')} preemption(s); host "
              f"{kv.get('host_seconds', 0):.2f} s vs forward {kv.get('forward_seconds', 0):.2f} s over "
              f"{kv.get('num_steps')} steps")


def main(argv: list[str]) -> int:
    settings = parse(argv)
    if settings["serve"]:
        serve()
        return 0
    print(f"bench_engine: models {settings['models']}, threads {settings['threads']}, systems {settings['systems']}, "
          f"padded batches {settings['batches']} x orders {settings['orders']}, {settings['rounds']} round(s), "
          f"cpus {os.cpu_count()}, load {load()}", flush=True)
    results: list = []
    for threads in settings["threads"]:
        run_threads(settings, threads, results)
    print(f"\nload average at the end: {load()}")
    if settings["json"]:
        with open(settings["json"], "w") as file:
            json.dump(dict(settings=settings, results=results), file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
