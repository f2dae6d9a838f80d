"""Build the tokenizer and processor of the moehooks lab model (a tiny Qwen3-VL-MoE).

Example:
    >>> from moehooks.lab.processor import build_processor, IMAGE_SIZE
    >>> processor = build_processor()
    >>> messages = [{"role": "user", "content": [{"type": "text", "text": "3+4="}]}]
    >>> processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    '<|im_start|>user\\n3+4=<|im_end|>\\n<|im_start|>assistant\\n'

The tokenizer is a byte-level BPE (the scheme of the Qwen tokenizers) trained with the ``tokenizers``
library on a fixed, deterministic corpus of the lab tasks; digits and capital letters are always single
tokens (the general task reverses strings of capitals). It carries
the Qwen-VL special tokens, pads on the left (batched generation) with ``<|endoftext|>``.
The image processor is the PIL backend of the Qwen2-VL image processor (torchvision is not needed) with
patch 8, merge 2, temporal patch 2 and no resizing: a 64x32 (width x height) image gives a 1x4x8 patch
grid, i.e. 8 ``<|image_pad|>`` tokens after merging.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil, Qwen3VLProcessor

IMAGE_SIZE: tuple[int, int] = (64, 32)
"""Width and height in pixels of the images the lab model reads."""

PATCH_SIZE = 8
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen-VL special tokens, in vocabulary order (ids 0..6)."""

VOCAB_SIZE = 400
"""Target vocabulary size of the BPE (special tokens and the 256 byte symbols included)."""

NUMBER_WORDS: tuple[str, ...] = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()

CORPUS_PHRASES: tuple[str, ...] = (
    "Solve the problem in the image.",
    "What is the number in the image? Add two.",
    "plus",
    "minus",
    "times",
    "equals",
    "What is",
    "Reverse:",
    "Next letter:",
    "Echo:",
    "user",
    "assistant",
    "system",
)
"""Phrases of the lab prompts: the BPE merges are learned from these (plus letters, digits, symbols)."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}"
    "{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)
"""Qwen-style chat template: ``<|im_start|>{role}\\n{image tokens}{text}<|im_end|>\\n`` per message."""


def _corpus() -> list[str]:
    """Return the fixed training corpus of the BPE (deterministic, order included)."""
    lines = list(CORPUS_PHRASES) + list(NUMBER_WORDS)
    lines.append(string.ascii_lowercase)
    lines.append(string.digits + string.punctuation + " ")
    return lines * 4


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the lab tokenizer (byte-level BPE, single digits and capitals, Qwen-VL special tokens).

    Example:
        >>> tok = build_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("12+7=")["input_ids"])
        ['1', '2', '+', '7', '=']
    """
    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex("[A-Z]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    return tokenizer


def build_image_processor() -> Qwen2VLImageProcessorPil:
    """Build the PIL image processor for 64x32 lab images (8x8 patches, 2x2 merge, no resizing).

    Example:
        >>> build_image_processor().merge_size
        2
    """
    return Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        do_resize=False,
    )


class LabProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor without the video processor (which needs torchvision): images and text only.

    Example:
        >>> processor = LabProcessor(build_image_processor(), build_tokenizer(), chat_template=CHAT_TEMPLATE)
        >>> processor.image_token
        '<|image_pad|>'
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def build_processor() -> LabProcessor:
    """Build the lab processor: tokenizer + image processor + chat template.

    Example:
        >>> processor = build_processor()
        >>> processor.tokenizer.padding_side
        'left'
    """
    return LabProcessor(
        image_processor=build_image_processor(),
        tokenizer=build_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def chat_messages(question: str, with_image: bool) -> list[dict[str, object]]:
    """Return the one-turn user messages of a lab item: an optional image, then the question text.

    Example:
        >>> chat_messages("+2=", with_image=True)
        [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': '+2='}]}]
    """
    content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def prompt_text(processor: Qwen3VLProcessor, question: str, with_image: bool) -> str:
    """Return the generation prompt of a lab item (chat template with the assistant turn opened).

    Example:
        >>> prompt_text(build_processor(), "3+4=", with_image=False)
        '<|im_start|>user\\n3+4=<|im_end|>\\n<|im_start|>assistant\\n'
    """
    return processor.apply_chat_template(
        chat_messages(question, with_image), add_generation_prompt=True, tokenize=False
    )
