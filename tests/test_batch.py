"""The batch description driven call by call without a model: each step's rows against hand-computed ones.

Each test replays the forward calls one ``generate`` mode makes (their shapes, cache lengths, masks and fed
tokens, as transformers' generation loop sends them) into ``describe`` and checks every row tensor against a
count made by hand from the mode's definition: prompt positions are prefill, later ones decode; a prompt's
copies (beams) count its prompt once; recomputed positions (``use_cache=False``) count 0; rows fed an
end-of-sequence token count 0 from then on; cropped candidates are retracted.
"""

from __future__ import annotations

import torch

from moehooks.batch import Call, State, describe, prompt_facts


class Cache:
    """A dynamic cache as the description sees it: an object whose ``get_seq_length()`` is its length."""

    def __init__(self, length: int = 0) -> None:
        self.length = length

    def get_seq_length(self) -> int:
        return self.length


def _rows(batch) -> dict[str, list[int]]:
    return {name: getattr(batch, name).tolist() for name in ("valid", "count", "phase", "sample", "image")}


def _generate(state: State, prompts: int, prompt_len: int, **kwargs):
    return state.start(prompt_facts((torch.ones(prompts, prompt_len, dtype=torch.long),), kwargs))


def test_prefill_then_decode_with_padding_and_an_end_of_sequence_row():
    state, cache = State(), Cache()
    gen = _generate(state, 2, 3, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), eos_token_id=2)
    prefill = describe(Call(2, 3, cache=cache, length=0), state)
    assert _rows(prefill) == {"valid": [0, 1, 1, 1, 1, 1], "count": [0, 1, 1, 1, 1, 1], "phase": [0] * 6,
                              "sample": [0, 0, 0, 1, 1, 1], "image": [0] * 6}
    assert (prefill.start, prefill.prompt, prefill.phases, prefill.speculative) == (0, 3, (0,), False)
    cache.length = 3
    step = describe(Call(2, 1, ids=torch.tensor([[2], [7]]), cache=cache, length=3), state)  # row 0 fed EOS
    assert _rows(step) == {"valid": [1, 1], "count": [0, 1], "phase": [1, 1], "sample": [0, 1], "image": [0, 0]}
    assert (step.start, step.prompt, step.phases) == (3, 0, (1,))
    cache.length = 4
    after = describe(Call(2, 1, ids=torch.tensor([[0], [8]]), cache=cache, length=4), state)  # its padding
    assert after.count.tolist() == [0, 1] and gen.seen == 5 and state.retracted == 0


def test_chunked_prefill_is_prefill_until_the_prompt_length():
    state, cache = State(), Cache()
    _generate(state, 1, 5)
    first = describe(Call(1, 3, cache=cache, length=0), state)
    second = describe(Call(1, 2, cache=cache, length=3), state)
    decode = describe(Call(1, 1, cache=cache, length=5), state)
    assert (first.phase.tolist(), first.count.tolist(), first.prompt) == ([0, 0, 0], [1, 1, 1], 3)
    assert (second.phase.tolist(), second.count.tolist(), second.start, second.speculative) == ([0, 0], [1, 1], 3,
                                                                                                False)
    assert (decode.phase.tolist(), decode.count.tolist(), decode.start) == ([1], [1], 5)


def test_beams_count_the_prompt_once_and_every_beams_decode_rows():
    state, cache = State(), Cache()
    gen = _generate(state, 2, 2, num_beams=2)
    prefill = describe(Call(4, 2, cache=cache, length=0), state)  # 2 prompts x 2 beams
    assert gen.factor == 2
    assert _rows(prefill) == {"valid": [1] * 8, "count": [1, 1, 0, 0, 1, 1, 0, 0], "phase": [0] * 8,
                              "sample": [0, 0, 0, 0, 1, 1, 1, 1], "image": [0] * 8}
    step = describe(Call(4, 1, ids=torch.tensor([[0], [0], [5], [6]]), cache=cache, length=2), state)
    assert (step.count.tolist(), step.sample.tolist(), step.samples) == ([1, 1, 1, 1], [0, 0, 1, 1], 2)


def test_speculative_candidates_are_retracted_when_the_cache_is_cropped():
    state, cache = State(), Cache()
    gen = _generate(state, 1, 2)
    describe(Call(1, 2, cache=cache, length=0), state)
    verify = describe(Call(1, 3, cache=cache, length=2), state)  # the last token and 2 candidates
    assert (verify.phase.tolist(), verify.count.tolist(), verify.speculative, gen.seen) == ([1, 1, 1], [1, 1, 1],
                                                                                           True, 5)
    cache.length = 3  # one candidate accepted: generate cropped the cache to 3 positions
    nxt = describe(Call(1, 2, cache=cache, length=3), state)
    assert state.retracted == 2 and (nxt.start, nxt.count.tolist(), gen.seen) == (3, [1, 1], 5)
    again = describe(Call(1, 1, cache=cache, length=5), state)
    assert state.retracted == 0 and again.count.tolist() == [1]
    cache.length = 4  # the last call's candidate rejected after it: retracted when generate returns
    assert gen.unaccepted() == 2


def test_use_cache_false_recounts_nothing():
    state = State()
    _generate(state, 1, 2)
    calls = [describe(Call(1, n), state) for n in (2, 3, 4)]  # each call recomputes the whole sequence
    assert [c.phase.tolist() for c in calls] == [[0, 0], [0, 0, 1], [0, 0, 1, 1]]
    assert [c.count.tolist() for c in calls] == [[1, 1], [0, 0, 1], [0, 0, 0, 1]]
    assert [c.speculative for c in calls] == [False, False, False]


def test_a_static_cache_advances_call_by_call():
    state, cache = State(), Cache()
    _generate(state, 1, 3)
    on_device = torch.tensor(0)  # a static cache's length lives on the device and is never read
    prefill = describe(Call(1, 3, cache=cache, length=on_device), state)
    steps = [describe(Call(1, 1, cache=cache, length=on_device), state) for _ in range(2)]
    assert (prefill.start, prefill.phase.tolist()) == (0, [0, 0, 0])
    assert [(s.start, s.phase.tolist(), s.count.tolist()) for s in steps] == [(3, [1], [1]), (4, [1], [1])]


def test_outside_generate_new_prompts_are_numbered_and_a_cache_is_decode():
    state = State()
    first = describe(Call(2, 2), state)
    second = describe(Call(1, 3, mask=torch.tensor([[0, 1, 1]])), state)
    step = describe(Call(1, 1, cache=Cache(3), length=3), state)
    assert (first.sample.tolist(), first.first_sample, second.first_sample, state.samples) == ([0, 0, 1, 1], 0, 2, 3)
    assert (second.valid.tolist(), second.count.tolist(), second.phase.tolist()) == ([0, 1, 1], [0, 1, 1], [0] * 3)
    assert (step.phase.tolist(), step.first_sample, step.start) == ([1], 2, 3)


def test_generate_numbers_its_prompts_after_earlier_ones_and_images_come_from_its_token_types():
    state, cache = State(), Cache()
    describe(Call(1, 2), state)
    _generate(state, 1, 3, mm_token_type_ids=torch.tensor([[0, 1, 1]]))
    prefill = describe(Call(1, 3, cache=cache, length=0), state)
    step = describe(Call(1, 1, cache=cache, length=3), state)
    assert (prefill.first_sample, prefill.image.tolist(), step.image.tolist()) == (1, [0, 1, 1], [0])
