"""Speculative decoding: prompt lookup and an assistant model against plain greedy generate(), turbogen and transformers.

    python bench/e2e/bench_speculative.py                          # every case, 2 threads, 3 rounds
    python bench/e2e/bench_speculative.py --threads=1 --rounds=5 embedded:1 tiny:8
    python bench/e2e/bench_speculative.py --runners=plain,lookup,assisted embedded-self:1   # only these runners

The issue's targets (greedy, 128 new tokens, an input-grounded workload): prompt lookup at least 2.0x the tokens/s
of plain turbogen greedy at batch 1 and 1.5x at batch 8, identical output; assisted generation with the shipped
draft at least 1.3x plain greedy on the embedded model at batch 1.

Workload ("input-grounded": the prompt holds a passage the output repeats or edits):

* ``embedded``: the embedded default model (trained on Jane Austen's novels). Each prompt is a public-domain
  Austen passage, a blank line, then the passage's first words again, so continuing means copying.
* ``tiny``: the tiny Llama of the end-to-end targets (random weights, vocabulary 32000, hidden 256, 4 layers). A
  model with random weights copies nothing on purpose; each prompt is a random passage followed by its first
  16 tokens. What prompt lookup finds there is whatever repetition the model's own greedy output has.

Neither model reproduces those passages (they do not copy from their prompt), so two more workloads hold a
passage the output does repeat, for the model at hand: the passage is the model's own output.

* ``embedded-self``: for each of the Austen passages, the seed is the passage's first eight words; the
  passage is the seed followed by the embedded model's greedy continuation of it (plain turbogen greedy,
  batch 1, ``NEW_TOKENS`` new tokens, decoded without special tokens); the prompt is that passage, a blank
  line, then the seed again. Continuing the prompt greedily means continuing the seed, which the passage
  already did.
* ``tiny-self``: the same with the tiny Llama at the token level: the seed of row ``r`` is ``8 + 4 * r``
  random tokens; the passage is the seed followed by the model's greedy continuation of it (``NEW_TOKENS``
  tokens); the prompt is the passage followed by the seed.

These are built once, before timing, from the models' greedy output alone (nothing in them depends on the
speed of any runner); the acceptance rate of each workload is reported with its speed.

Batch 8 uses 8 prompts of different lengths (left-padded). EOS is the pad id, which neither model emits here, so
every row generates all 128 tokens.

Runners, taking turns round by round (:func:`turbogen.cli.benchmark.round_seconds`, one untimed warm-up each):
``plain`` (turbogen greedy), ``lookup`` (turbogen, ``prompt_lookup_num_tokens``), ``assisted`` (turbogen with the
shipped draft; embedded model only), and at batch 1 the same three through transformers' own ``generate()``
(``hf-*``; transformers refuses speculation at batch > 1), and ``lookup-h`` / ``assisted-h``: turbogen with
``num_assistant_tokens_schedule="heuristic_transient"``, whose draft counts adapt per row and are capped by a
governor that times the steps (:class:`turbogen.generation.candidates.WidthGovernor`). Before timing, every
speculative runner's sequences are compared with plain greedy's.

Reported per runner: new tokens/s (best and median round), target forwards per call, and for the speculative
ones at batch 1 the acceptance rate (accepted drafts / proposed drafts), counted by a forward hook on the
target: each call after the prefill feeds the last token plus the drafts, and emits the accepted drafts plus
one token.
"""

from __future__ import annotations

import statistics
import sys
from typing import Callable, Optional

import torch

from turbogen.cli import benchmark as e2e

NEW_TOKENS = 128
LOOKUP_TOKENS = 10
DEFAULT_CASES = (("embedded", 1), ("embedded", 8), ("tiny", 1), ("tiny", 8), ("embedded-self", 1),
                 ("embedded-self", 8), ("tiny-self", 1), ("tiny-self", 8))

# Public-domain passages (Jane Austen, 1811-1817), for the embedded model's input-grounded prompts.
PASSAGES = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
    "considered the rightful property of some one or other of their daughters.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, seemed to "
    "unite some of the best blessings of existence; and had lived nearly twenty-one years in the world with "
    "very little to distress or vex her.",
    "The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was "
    "at Norland Park, in the centre of their property, where, for many generations, they had lived in so "
    "respectable a manner as to engage the general good opinion of their surrounding acquaintance.",
    "No one who had ever seen Catherine Morland in her infancy would have supposed her born to be an heroine. "
    "Her situation in life, the character of her father and mother, her own person and disposition, were all "
    "equally against her.",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement, never took "
    "up any book but the Baronetage; there he found occupation for an idle hour, and consolation in a "
    "distressed one.",
    "About thirty years ago Miss Maria Ward, of Huntingdon, with only seven thousand pounds, had the good luck "
    "to captivate Sir Thomas Bertram, of Mansfield Park, in the county of Northampton, and to be thereby "
    "raised to the rank of a baronet's lady.",
    "She was a woman of mean understanding, little information, and uncertain temper. When she was "
    "discontented, she fancied herself nervous. The business of her life was to get her daughters married; "
    "its solace was visiting and news.",
    "Mr. Bennet was so odd a mixture of quick parts, sarcastic humour, reserve, and caprice, that the "
    "experience of three and twenty years had been insufficient to make his wife understand his character.",
)


def embedded_workload(batch: int):
    """The embedded model, its draft (or None) and ``batch`` left-padded prompts: passage, blank line, the
    passage's first eight words."""
    model, tokenizer, draft = _embedded_models()
    texts = [f"{p}\n\n{' '.join(p.split()[:8])}" for p in (PASSAGES * batch)[:batch]]
    tokenizer.padding_side = "left"
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    return model, draft, encoded["input_ids"], encoded["attention_mask"]


def _embedded_models():
    """The embedded model, its tokenizer and its shipped draft (or None)."""
    from turbogen.models import load_default_model

    model, tokenizer, trained = load_default_model()
    if not trained:
        raise SystemExit("the embedded model's weights are not installed: this workload needs them")
    return model, tokenizer, _default_draft()


def _default_draft():
    """The shipped draft of the embedded model, or None where this build has none."""
    from turbogen import models

    loader = getattr(models, "load_default_draft_model", None)
    if loader is None:
        return None
    loaded = loader()
    return loaded[0] if isinstance(loaded, tuple) else loaded


def tiny_workload(batch: int):
    """The tiny Llama and ``batch`` left-padded prompts: a random passage of 96 + 16 * row tokens, then its
    first 16 tokens."""
    model = e2e.ModelSpec().build()
    generator = torch.Generator().manual_seed(0)
    prompts = []
    for row in range(batch):
        passage = torch.randint(3, model.config.vocab_size, (96 + 16 * row,), generator=generator)
        prompts.append(torch.cat([passage, passage[:16]]))
    return (model, None) + _left_padded(prompts)


def greedy_continuation(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The ``NEW_TOKENS`` tokens of plain turbogen greedy decoding after ``input_ids`` (``[1, P]``), EOS
    being the pad id as in the timed runs."""
    from transformers import GenerationConfig

    from turbogen.generate import generate

    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)
    call = e2e._in_inference_mode(e2e._with_model_defaults(model, config, lambda: generate(
        model, input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
        eos_token_id=0)))
    return call()[0, input_ids.shape[1]:]


def embedded_self_workload(batch: int):
    """The embedded model, its draft and ``batch`` left-padded prompts whose passage is the model's own
    greedy continuation of the seed: seed + continuation, a blank line, the seed (the module docstring)."""
    model, tokenizer, draft = _embedded_models()
    texts = []
    for passage in (PASSAGES * batch)[:batch]:
        seed = " ".join(passage.split()[:8])
        seed_ids = tokenizer(seed, return_tensors="pt")["input_ids"]
        continuation = greedy_continuation(model, seed_ids)
        own = tokenizer.decode(torch.cat([seed_ids[0], continuation]), skip_special_tokens=True)
        texts.append(f"{own}\n\n{seed}")
    tokenizer.padding_side = "left"
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    return model, draft, encoded["input_ids"], encoded["attention_mask"]


def tiny_self_workload(batch: int):
    """The tiny Llama and ``batch`` left-padded prompts: seed (``8 + 4 * row`` random tokens), the model's
    greedy continuation of it, the seed again (the module docstring)."""
    model = e2e.ModelSpec().build()
    generator = torch.Generator().manual_seed(0)
    prompts = []
    for row in range(batch):
        seed = torch.randint(3, model.config.vocab_size, (8 + 4 * row,), generator=generator)
        prompts.append(torch.cat([seed, greedy_continuation(model, seed[None]), seed]))
    return (model, None) + _left_padded(prompts)


def _left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[len(prompts), longest]``, pad id 0 on the left."""
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = prompt
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


WORKLOADS = {"embedded": embedded_workload, "tiny": tiny_workload, "embedded-self": embedded_self_workload,
             "tiny-self": tiny_self_workload}


class ForwardCounter:
    """Counts the target's forward calls and the positions fed after the first (prefill) call of each
    generate(), from a forward pre-hook."""

    def __init__(self, model):
        self.calls = 0
        self.fed_after_prefill = 0
        self._first = True
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def start(self) -> None:
        self.calls, self.fed_after_prefill, self._first = 0, 0, True

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        if self._first:
            self._first = False
        elif ids is not None:
            self.fed_after_prefill += ids.shape[1]


def runner_calls(model, draft, input_ids, attention_mask, batch: int) -> dict[str, Callable[[], torch.Tensor]]:
    """One zero-argument callable per runner; transformers' only at batch 1."""
    from transformers import GenerationConfig

    from turbogen.generate import generate

    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)
    # EOS is the pad id, which these models do not emit: every row generates all its tokens. (eos_token_id=None
    # would say so directly, but transformers 4.57's prompt lookup then fails in torch.isin.)
    common = dict(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, eos_token_id=0)
    speculation = {"plain": {}, "lookup": {"prompt_lookup_num_tokens": LOOKUP_TOKENS}}
    if draft is not None:
        speculation["assisted"] = {"assistant_model": draft}
    calls = {}
    for name, extra in speculation.items():
        calls[name] = lambda extra=extra: generate(model, **common, **extra)
        if batch == 1:
            calls[f"hf-{name}"] = lambda extra=extra: model.generate(**common, **extra)
        if extra:  # turbogen's adaptive draft counts (the governed heuristic schedule)
            adaptive = {**extra, "num_assistant_tokens_schedule": "heuristic_transient"}
            calls[f"{name}-h"] = lambda extra=adaptive: generate(model, **common, **extra)
    return {name: e2e._in_inference_mode(e2e._with_model_defaults(model, config, call))
            for name, call in calls.items()}


def acceptance(counter: ForwardCounter, new_tokens: int, batch: int) -> tuple[int, Optional[float]]:
    """Target forwards of the last call and, at batch 1, accepted / proposed drafts: every forward after the
    prefill feeds one token plus the drafts and emits the accepted drafts plus one token."""
    steps = counter.calls - 1
    proposed = counter.fed_after_prefill - steps
    if batch != 1 or proposed <= 0:
        return counter.calls, None
    accepted = (new_tokens - 1) - steps
    return counter.calls, accepted / proposed


def main(argv: list[str]) -> int:
    flags = [arg for arg in argv if arg.startswith("--")]
    malformed = [arg for arg in flags if "=" not in arg]
    if malformed:
        raise SystemExit(f"options take a value (--threads=N, --rounds=N, --runners=a,b): got {malformed}; "
                         "positional arguments are cases such as tiny:8 (see the module docstring)")
    options = dict(arg.split("=", 1) for arg in flags)
    unknown = set(options) - {"--threads", "--rounds", "--runners"}
    if unknown:
        raise SystemExit(f"unknown options {sorted(unknown)}")
    torch.set_num_threads(int(options.get("--threads", 2)))
    rounds = int(options.get("--rounds", 3))
    chosen = options["--runners"].split(",") if "--runners" in options else None
    if chosen is not None and "plain" not in chosen:
        raise SystemExit("--runners must include plain (the reference of every ratio)")
    args = [arg for arg in argv if not arg.startswith("--")]
    cases = [(name, int(batch)) for name, batch in (arg.split(":") for arg in args)] if args else DEFAULT_CASES
    import transformers

    print(f"transformers {transformers.__version__}, {NEW_TOKENS} new tokens, greedy, prompt lookup "
          f"{LOOKUP_TOKENS} tokens; {torch.get_num_threads()} torch thread(s), {rounds} rounds taken in turns",
          flush=True)
    table, all_same = [], True
    for workload, batch in cases:
        model, draft, input_ids, attention_mask = WORKLOADS[workload](batch)
        counter = ForwardCounter(model)
        calls = runner_calls(model, draft, input_ids, attention_mask, batch)
        if chosen is not None:
            calls = {name: call for name, call in calls.items() if name in chosen}
        print(f"{workload} B={batch} (prompt width {input_ids.shape[1]}):", flush=True)
        reference = calls["plain"]()
        stats = {}
        for name, call in calls.items():
            counter.start()
            sequences = call()
            stats[name] = acceptance(counter, NEW_TOKENS, batch)
            same = sequences.shape == reference.shape and torch.equal(sequences, reference)
            all_same &= same or name.startswith("hf-")  # transformers' own greedy may differ in float ties
            print(f"  {name:12s} sequences == turbogen plain greedy: {same}", flush=True)
        seconds = e2e.round_seconds(calls, rounds)
        plain_best, plain_median = min(seconds["plain"]), statistics.median(seconds["plain"])
        for name, times in seconds.items():
            best, median = min(times), statistics.median(times)
            forwards, rate = stats[name]
            table.append((workload, batch, name, NEW_TOKENS * batch / best, NEW_TOKENS * batch / median,
                          plain_best / best, plain_median / median, forwards, rate))
            print(f"  {name:12s} best {NEW_TOKENS * batch / best:8.0f} tok/s  median "
                  f"{NEW_TOKENS * batch / median:8.0f} tok/s  forwards {forwards:4d}  acceptance "
                  f"{'-' if rate is None else f'{rate:.2f}'}  rounds (s) " + " ".join(f"{t:.3f}" for t in times),
                  flush=True)
    print("\n| model | batch | runner | tok/s best (median) | vs turbogen plain best (median) | target forwards | "
          "acceptance |")
    print("|---|---|---|---|---|---|---|")
    for workload, batch, name, best, median, ratio, ratio_median, forwards, rate in table:
        print(f"| {workload} | {batch} | {name} | {best:.0f} ({median:.0f}) | {ratio:.2f} ({ratio_median:.2f}) | "
              f"{forwards} | {'-' if rate is None else f'{rate:.2f}'} |")
    print("\nturbogen's speculative sequences equal its plain greedy ones everywhere:", all_same)
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
