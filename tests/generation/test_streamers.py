"""Streamers: the put/end protocol as generate drives it, turbogen's text streamers against transformers'
on the same token stream, and both libraries' streamers consuming turbogen.generate from another thread."""

from __future__ import annotations

import threading

import pytest
import torch
import transformers

from tiny_models import encode_batch, tiny_model, tiny_tokenizer
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen.generate import generate
from turbogen.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

NEW_TOKENS = 10


class _Recorder(BaseStreamer):
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value.clone()))

    def end(self):
        self.calls.append(("end", None))


@pytest.mark.parametrize("do_sample", [False, True])
def test_generate_streams_prompt_then_each_token_then_end(do_sample):
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["the quick brown fox"])
    recorder = _Recorder()
    out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=do_sample,
                   seed=0, streamer=recorder)
    kinds = [kind for kind, _ in recorder.calls]
    assert kinds == ["put"] * (1 + NEW_TOKENS) + ["end"]
    prompt = recorder.calls[0][1]
    assert prompt.device.type == "cpu" and torch.equal(prompt, input_ids)
    streamed = torch.cat([value for _, value in recorder.calls[1:-1]])
    assert torch.equal(streamed, out[0, input_ids.shape[1]:])


class _ListTokenizer:
    """Decodes ids by looking up fixed strings: lets a test choose spaces, newlines and CJK freely."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, **kwargs):
        return "".join(self.pieces[i] for i in ids)


PIECES = ["Hel", "lo", " wor", "ld", ",\n", "新", "年", " ok", "ay", " ", "end"]


@pytest.mark.parametrize("skip_prompt", [False, True])
def test_text_streamer_prints_what_transformers_prints(capsys, skip_prompt):
    tokenizer = _ListTokenizer(PIECES)
    stream = [torch.tensor([[0, 1]])] + [torch.tensor([i]) for i in range(2, len(PIECES))]
    outputs = []
    for streamer in (transformers.TextStreamer(tokenizer, skip_prompt=skip_prompt),
                     TextStreamer(tokenizer, skip_prompt=skip_prompt)):
        for value in stream:
            streamer.put(value)
        streamer.end()
        outputs.append(capsys.readouterr().out)
    assert outputs[1] == outputs[0]
    assert outputs[1].startswith("Hello world," if not skip_prompt else " world,")


def test_text_iterator_streamer_yields_the_same_pieces_as_transformers():
    tokenizer = _ListTokenizer(PIECES)
    pieces = []
    for streamer in (transformers.TextIteratorStreamer(tokenizer), TextIteratorStreamer(tokenizer)):
        streamer.put(torch.tensor([[0]]))
        for i in range(1, len(PIECES)):
            streamer.put(torch.tensor([i]))
        streamer.end()
        pieces.append(list(streamer))
    assert pieces[1] == pieces[0]
    assert "".join(pieces[1]) == "".join(PIECES)


@pytest.mark.parametrize("streamer_class", [TextIteratorStreamer, transformers.TextIteratorStreamer],
                         ids=["turbogen", "transformers"])
def test_iterator_streamer_in_a_thread_gives_the_decoded_output(streamer_class):
    model = tiny_model("gpt2")
    tokenizer = tiny_tokenizer()
    input_ids, attention_mask = encode_batch(["hello world"])
    streamer = streamer_class(tokenizer, skip_prompt=True, timeout=60)
    result = {}

    def run():
        result["sequences"] = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                                       streamer=streamer)

    thread = threading.Thread(target=run)
    thread.start()
    text = "".join(streamer)
    thread.join(timeout=60)
    assert text == tokenizer.decode(result["sequences"][0, input_ids.shape[1]:])
    assert text.strip(), "the stream should not be empty"


def test_text_streamer_rejects_batches():
    streamer = TextStreamer(_ListTokenizer(PIECES))
    with pytest.raises(ValueError, match="batch size 1"):
        streamer.put(torch.tensor([[0], [1]]))


def test_streamer_with_beam_search_is_an_error():
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello"])
    with pytest.raises(ValueError, match="streamer"):
        generate(model, input_ids, attention_mask=attention_mask, num_beams=2, max_new_tokens=3, streamer=_Recorder())
