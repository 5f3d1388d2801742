"""Timing shared by ``turbogen demo``, ``turbogen bench`` and bench/: end-to-end generate() and the ops.

End to end, three runners over the same model, prompt and settings, timed side by side:

- ``forward``: the floor. Prefill, then one model forward per new token with a DynamicCache and an
  argmax, nothing else. Everything generate() does beyond this is overhead.
- ``turbogen``: :func:`turbogen.generate.generate`.
- ``transformers``: the model's own ``generate`` (transformers' GenerationMixin).

turbogen and transformers get the same explicit generation config and ignore the model's own defaults
(``use_model_defaults=False``), and no EOS token, so every runner generates exactly ``new_tokens`` per
sequence whatever the weights. Rates are generated tokens per second over all decoded rows: ``batch``
rows for greedy search and sampling, ``batch * num_beams`` for beam search (the floor then runs as many
rows, so the ratios compare equal work).

Ops: each ``turbogen.ops`` kernel on its compiled CPU backend next to the torch / transformers code it
replaces, on logits of Llama-sized vocabularies.

Everything here needs transformers; it is imported on first use only.
"""

from __future__ import annotations

import dataclasses
import inspect
import statistics
import time
from typing import Callable, Iterable, Optional

import torch

from .. import _transformers_compat as _compat

# The decoding methods timed end to end, as generation parameters. "sampling" is a typical chat setting;
# "sampling_without_penalty" is the same without its repetition penalty, to price the penalty alone
# (bench/e2e/generate_overhead.py), and is not one of the default modes.
SETTINGS = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.1),
    "beam": dict(do_sample=False, num_beams=4),
    "sampling_without_penalty": dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9),
}
DEFAULT_MODES = ("greedy", "sampling", "beam")
RUNNERS = ("forward", "turbogen", "transformers")
# What beam search ranks per batch row and step: 2 candidates per beam (one may end with EOS).
BEAM_CANDIDATES = 2 * SETTINGS["beam"]["num_beams"]

# Op benchmarks: logits shapes (rows, vocab: Llama 2's and Llama 3's); the filters are the "sampling" setting's.
OP_SHAPES = ((1, 32000), (8, 32000), (32, 32000), (8, 128256))
OP_SHAPES_QUICK = ((1, 32000), (8, 32000))


# ------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A Llama-architecture model with random weights (speed does not depend on the weights).

    The defaults are the tiny Llama the end-to-end targets are stated for: vocabulary 32000 (Llama 2's),
    hidden size 256, 4 layers, 8 attention heads sharing 4 key/value heads.
    """

    vocab_size: int = 32000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4

    def build(self, seed: int = 0):
        """The model in eval mode, float32; the same spec and seed always give the same weights, and the
        caller's global RNG state is left as it was."""
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                             intermediate_size=self.hidden_size * 4, num_hidden_layers=self.num_layers,
                             num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
                             max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        return model.eval()


@dataclasses.dataclass(frozen=True)
class EndToEndPlan:
    """What ``turbogen bench`` times end to end: every mode x batch size, each runner side by side."""

    model: ModelSpec = ModelSpec()
    modes: tuple[str, ...] = DEFAULT_MODES
    batches: tuple[int, ...] = (1, 8)
    prompt_length: int = 16
    new_tokens: int = 64
    repeats: int = 3
    runners: tuple[str, ...] = RUNNERS

    def __post_init__(self):
        unknown = [mode for mode in self.modes if mode not in SETTINGS]
        if unknown:
            raise ValueError(f"modes must be among {tuple(SETTINGS)}, got {unknown}")
        unknown = [runner for runner in self.runners if runner not in RUNNERS]
        if unknown:
            raise ValueError(f"runners must be among {RUNNERS}, got {unknown}")
        for name in ("prompt_length", "new_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batches must be non-empty positive sizes, got {self.batches}")

    @property
    def num_measurements(self) -> int:
        return len(self.modes) * len(self.batches) * len(self.runners)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """The best time of one runner generating ``new_tokens`` tokens for ``batch`` prompts (``rows`` decoded
    sequences: ``batch * num_beams`` for beam search): the fastest round's ``seconds`` and, when measured, the
    median round's ``median_seconds`` (on a shared machine the steadier of the two for ratios of runners that
    took turns)."""

    runner: str
    mode: str
    batch: int
    rows: int
    new_tokens: int
    seconds: float
    median_seconds: Optional[float] = None

    @property
    def tokens_per_second(self) -> float:
        return self.rows * self.new_tokens / self.seconds

    @property
    def median_tokens_per_second(self) -> Optional[float]:
        return None if self.median_seconds is None else self.rows * self.new_tokens / self.median_seconds

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), tokens_per_second=self.tokens_per_second,
                    median_tokens_per_second=self.median_tokens_per_second)


@dataclasses.dataclass(frozen=True)
class Speedup:
    """turbogen's rate over the others' for one (mode, batch): above 1 against transformers means turbogen
    is faster; against the forward loop it is at most about 1 (the floor), and the gap is overhead. The
    ``_median`` ratios compare the median rounds' rates."""

    mode: str
    batch: int
    vs_transformers: Optional[float]
    vs_forward: Optional[float]
    vs_transformers_median: Optional[float] = None
    vs_forward_median: Optional[float] = None


def round_seconds(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of ``repeats`` timed calls of each of ``calls``, after one untimed warm-up call each
    (allocator, caches, lazy imports). The calls take turns, one round at a time, so a change in the load of
    a shared machine slows every runner alike."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for fn in calls.values():
        fn()
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            rounds[name].append(time.perf_counter() - start)
    return rounds


@torch.inference_mode()
def forward_loop(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The floor: prefill + one forward per token, greedy, no processors, no stopping checks."""
    from transformers import DynamicCache

    cache = DynamicCache()
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True,
                **{_compat.logits_to_keep_name(inspect.signature(model.forward).parameters) or "logits_to_keep": 1})
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = attention_mask
    position = position_ids[:, -1:]
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = position + 1
        out = model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache,
                    use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return token


def generation_config(model, mode: str, new_tokens: int):
    """The explicit ``transformers.GenerationConfig`` both generate() runners get for ``mode``."""
    from transformers import GenerationConfig

    if mode not in SETTINGS:
        raise ValueError(f"mode must be one of {tuple(SETTINGS)}, got {mode!r}")
    pad_token_id = model.generation_config.pad_token_id
    return GenerationConfig(**SETTINGS[mode], max_new_tokens=new_tokens,
                            pad_token_id=0 if pad_token_id is None else pad_token_id)


def runner_calls(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str,
                 new_tokens: int) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per runner, each generating ``new_tokens`` tokens per row in ``mode``
    under ``torch.inference_mode``."""
    from ..generate import generate

    config = generation_config(model, mode, new_tokens)
    # eos_token_id=None is a call argument because it must override the model's EOS, which transformers
    # and turbogen both fill into a config that has none.
    common = dict(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, eos_token_id=None)
    rows_per_prompt = decoded_rows(mode, 1)
    floor_ids = input_ids.repeat_interleave(rows_per_prompt, dim=0)
    floor_mask = attention_mask.repeat_interleave(rows_per_prompt, dim=0)
    calls = {
        "forward": lambda: forward_loop(model, floor_ids, floor_mask, new_tokens),
        "turbogen": _with_model_defaults(model, config, lambda: generate(model, seed=0, **common)),
        "transformers": _with_model_defaults(model, config, lambda: model.generate(**common)),
    }
    return {runner: _in_inference_mode(call) for runner, call in calls.items()}


def _with_model_defaults(model, config, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``config`` as the model's own generation defaults, so that neither generate() fills
    in values from the model's config (``use_model_defaults=False`` does this in transformers 4.57 only)."""

    def call():
        saved = model.generation_config
        model.generation_config = config
        try:
            return fn()
        finally:
            model.generation_config = saved

    return call


def _in_inference_mode(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run under ``torch.inference_mode`` (no autograd bookkeeping), the same for every runner."""

    def call():
        with torch.inference_mode():
            return fn()

    return call


def decoded_rows(mode: str, batch: int) -> int:
    """How many sequences ``mode`` decodes for ``batch`` prompts (beam search: one per beam)."""
    return batch * SETTINGS[mode].get("num_beams", 1)


def compare(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str, new_tokens: int,
            repeats: int = 3, runners: Iterable[str] = RUNNERS,
            on_measurement: Optional[Callable[[Measurement], None]] = None) -> list[Measurement]:
    """Times the runners on the same inputs and settings, taking turns (:func:`round_seconds`); returns one
    Measurement per runner, in the order of ``runners``, calling ``on_measurement`` after each (progress
    reporting)."""
    calls = runner_calls(model, input_ids, attention_mask, mode, new_tokens)
    unknown = [runner for runner in runners if runner not in calls]
    if unknown:
        raise ValueError(f"runners must be among {tuple(calls)}, got {unknown}")
    batch = input_ids.shape[0]
    rows = decoded_rows(mode, batch)
    rounds = round_seconds({runner: calls[runner] for runner in runners}, repeats)
    results = []
    for runner in runners:
        measurement = Measurement(runner, mode, batch, rows, new_tokens, min(rounds[runner]),
                                  statistics.median(rounds[runner]))
        results.append(measurement)
        if on_measurement is not None:
            on_measurement(measurement)
    return results


def speedups(measurements: Iterable[Measurement]) -> list[Speedup]:
    """turbogen's speed ratios per (mode, batch), in order of first appearance; a ratio whose runners were
    not both measured is None."""
    by_case: dict[tuple[str, int], dict[str, Measurement]] = {}
    for measurement in measurements:
        by_case.setdefault((measurement.mode, measurement.batch), {})[measurement.runner] = measurement

    def ratio(runners: dict[str, Measurement], other: str, rate: str) -> Optional[float]:
        if "turbogen" not in runners or other not in runners:
            return None
        ours, theirs = getattr(runners["turbogen"], rate), getattr(runners[other], rate)
        return None if ours is None or theirs is None else ours / theirs

    return [Speedup(mode, batch,
                    *(ratio(runners, other, "tokens_per_second") for other in ("transformers", "forward")),
                    *(ratio(runners, other, "median_tokens_per_second") for other in ("transformers", "forward")))
            for (mode, batch), runners in by_case.items()]


def bench_prompt(batch: int, prompt_length: int = 16, vocab_size: int = 32000, seed: int = 0):
    """Random prompt token ids (avoiding the special ids 0-2) and an all-ones attention mask."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, prompt_length), generator=generator)
    return input_ids, torch.ones_like(input_ids)


def run_end_to_end(plan: EndToEndPlan = EndToEndPlan(),
                   on_measurement: Optional[Callable[[Measurement], None]] = None) -> list[Measurement]:
    """Builds ``plan.model`` and times every mode x batch of ``plan``."""
    model = plan.model.build()
    results = []
    for mode in plan.modes:
        for batch in plan.batches:
            input_ids, attention_mask = bench_prompt(batch, plan.prompt_length, plan.model.vocab_size)
            results += compare(model, input_ids, attention_mask, mode, plan.new_tokens, plan.repeats,
                               plan.runners, on_measurement)
    return results


# ------------------------------------------------------------------------------------------------
# Ops
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OpMeasurement:
    """Seconds per call of one implementation of ``op`` on float32 logits of ``shape``."""

    op: str
    shape: tuple[int, int]
    runner: str
    seconds: float

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), shape=list(self.shape))


def seconds_per_call(fn: Callable[[], object], repeats: int = 5, min_batch_seconds: float = 0.02) -> float:
    """Per-call time of a fast ``fn``: calls are timed in batches of at least ``min_batch_seconds`` (so the
    clock's resolution does not matter) and the best of ``repeats`` batches is kept."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    fn()
    number = 1
    while True:  # double the batch until it is long enough to time
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_batch_seconds:
            break
        number *= 2
    best = elapsed / number
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def _compiled_cpu_backend() -> str:
    """``"cpu"`` when the C++ extension is built, else ``"ref"`` (so the benchmark still runs)."""
    from .. import ops

    return "cpu" if ops.available_backends()["cpu"] else "ref"


def op_runners() -> dict[str, dict[str, Callable[[torch.Tensor], object]]]:
    """For each op: {runner name: fn(logits)}; turbogen's runner first, its baseline second. The temperature
    and filters are those of the end-to-end "sampling" setting; top-k keeps beam search's candidates."""
    from .. import ops

    backend = _compiled_cpu_backend()
    temperature, top_k, top_p = (SETTINGS["sampling"][name] for name in ("temperature", "top_k", "top_p"))
    return {
        "softmax": {
            f"turbogen {backend}": lambda logits: ops.softmax(logits, temperature, backend=backend),
            "torch": lambda logits: torch.softmax(logits / temperature, dim=-1),
        },
        "sample": {
            f"turbogen {backend}": lambda logits: ops.sample(logits, temperature=temperature, top_k=top_k,
                                                             top_p=top_p, seed=0, backend=backend),
            "transformers": lambda logits: transformers_sample(logits, temperature, top_k, top_p),
        },
        "topk": {
            f"turbogen {backend}": lambda scores: ops.topk(scores, BEAM_CANDIDATES, backend=backend),
            "torch": lambda scores: torch.topk(scores, BEAM_CANDIDATES),
        },
    }


def transformers_sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        min_p: float = 0.0) -> torch.Tensor:
    """What transformers' ``generate(do_sample=True)`` runs per step for these filters: its Temperature,
    TopK, TopP and MinP warpers (each only when it is on, as ``_get_logits_processor`` builds them),
    softmax, then ``torch.multinomial``. Returns ``[batch, 1]`` token ids."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    if min_p:
        scores = MinPLogitsWarper(min_p)(None, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)


def op_cases(shapes: Iterable[tuple[int, int]] = OP_SHAPES) -> list[tuple[str, tuple[int, int], str, Callable]]:
    """Every (op, shape, runner, fn) to time, the runners of one op and shape next to each other."""
    return [(op, tuple(shape), runner, fn)
            for op, runners in op_runners().items()
            for shape in shapes
            for runner, fn in runners.items()]


def run_ops(shapes: Iterable[tuple[int, int]] = OP_SHAPES, repeats: int = 5,
            on_measurement: Optional[Callable[[OpMeasurement], None]] = None) -> list[OpMeasurement]:
    """Times every op case on the same random float32 logits per shape."""
    generator = torch.Generator().manual_seed(0)
    logits_of = {}
    results = []
    for op, shape, runner, fn in op_cases(shapes):
        if shape not in logits_of:
            logits_of[shape] = torch.randn(shape, generator=generator)
        logits = logits_of[shape]
        with torch.inference_mode():
            measurement = OpMeasurement(op, shape, runner, seconds_per_call(lambda: fn(logits), repeats))
        results.append(measurement)
        if on_measurement is not None:
            on_measurement(measurement)
    return results


@dataclasses.dataclass(frozen=True)
class OpSpeedup:
    """How many times faster turbogen's ``runner`` is than ``baseline`` for one op and shape."""

    op: str
    shape: tuple[int, int]
    runner: str
    baseline: str
    speedup: float


def op_speedups(measurements: Iterable[OpMeasurement]) -> list[OpSpeedup]:
    """turbogen's speedup over each baseline, per op and shape, in order of first appearance."""
    times: dict[tuple[str, tuple[int, int]], dict[str, float]] = {}
    for measurement in measurements:
        times.setdefault((measurement.op, measurement.shape), {})[measurement.runner] = measurement.seconds
    return [OpSpeedup(op, shape, runner, baseline, by_runner[baseline] / by_runner[runner])
            for (op, shape), by_runner in times.items()
            for runner in by_runner if runner.startswith("turbogen")
            for baseline in by_runner if not baseline.startswith("turbogen")]
