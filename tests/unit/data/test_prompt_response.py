"""Prompt-response: templates, answer-only masks, BOS/EOS/SEP and truncation, checked by hand.

The byte tokenizer makes one token per ASCII character, so expected masks read as text.
"""

from typing import Any

import numpy as np
import pytest

from sft_trainer.data.errors import DataError
from sft_trainer.data.prompt_response import EncodeCounts, encode_prompt_response, prompt_ids, prompt_text
from sft_trainer.data.templates import parse_template
from sft_trainer.data.types import IGNORE_INDEX
from tests.unit.data.conftest import data_config, trained_segments


def encode(
    tokenizer: Any, rows: list[dict[str, Any]], **knobs: Any
) -> tuple[list[tuple[np.ndarray, np.ndarray]], EncodeCounts]:
    counts = EncodeCounts()
    config = data_config(**knobs)
    examples = list(encode_prompt_response(enumerate(rows, 1), "rows.jsonl", config, tokenizer, None, counts))
    return examples, counts


def test_answer_only_mask_default_template(byte_tok: Any) -> None:
    [(ids, targets)], _ = encode(byte_tok, [{"input": "2+2=", "output": "4"}])
    assert byte_tok.decode(ids) == "2+2= 4</s>"
    # positions:        2 + 2 =   4 </s>
    assert targets.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert trained_segments(byte_tok, ids, targets) == [" 4</s>"]


def test_full_loss_trains_everything_but_the_first_token(byte_tok: Any) -> None:
    [(ids, targets)], _ = encode(byte_tok, [{"input": "ab", "output": "c"}], answer_only_loss=False, add_eos=False)
    assert byte_tok.decode(ids) == "ab c"
    assert targets.tolist() == [0, 1, 1, 1]


def test_bos_sep_eos_and_custom_fields(byte_tok: Any) -> None:
    examples, _ = encode(
        byte_tok,
        [{"question": "Q?", "answer": "A."}],
        prompt_template="Question: {question}\nAnswer: {answer}",
        label_key="answer",
        add_bos=True,
        add_sep=True,
    )
    [(ids, targets)] = examples
    # sep falls back to eos (the byte tokenizer has none): <s> context </s> answer </s>
    assert byte_tok.decode(ids) == "<s>Question: Q?\nAnswer:</s> A.</s>"
    assert trained_segments(byte_tok, ids, targets) == [" A.</s>"]
    assert ids[0] == byte_tok.bos_token_id


def test_gsm8k_style_template_with_gpt2(gpt2_tok: Any) -> None:
    row = {"question": "Natalia sold 48 clips.", "answer": "She sold 72.\n#### 72"}
    [(ids, targets)], _ = encode(gpt2_tok, [row], prompt_template="Q: {question}\nA: {answer}", label_key="answer")
    assert trained_segments(gpt2_tok, ids, targets) == [" She sold 72.\n#### 72<|endoftext|>"]
    context = gpt2_tok.decode(ids[~targets])
    assert context == "Q: Natalia sold 48 clips.\nA:"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{input}", "no label placeholder"),
        ("{output} {input}", "must come last"),
        ("{input} {output} end", "must come last"),
        ("{input} {output}{output}", "more than once"),
        ("{input!r} {output}", "plain"),
        ("{input {output}", "not a valid format string"),
    ],
)
def test_bad_templates_are_rejected(template: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        parse_template(template, "output")
    assert caught.value.field == "data.prompt_template"


def test_missing_and_wrong_typed_fields_name_file_line_field(byte_tok: Any) -> None:
    with pytest.raises(DataError) as caught:
        encode(byte_tok, [{"input": "a", "output": "b"}, {"input": "a"}])
    assert str(caught.value).startswith("rows.jsonl:2: field 'output': missing field")
    with pytest.raises(DataError) as caught:
        encode(byte_tok, [{"input": 3, "output": "b"}])
    assert (caught.value.file, caught.value.line, caught.value.field) == ("rows.jsonl", 1, "input")
    assert "expected a string, got int" in str(caught.value)


def test_truncation_right_cuts_the_field_end(byte_tok: Any) -> None:
    # "abcdefghij" + " xy" + </s> = 14 tokens; max 10 -> the input loses 4 from its end.
    [(ids, targets)], counts = encode(byte_tok, [{"input": "abcdefghij", "output": "xy"}], max_seq_length=10)
    assert byte_tok.decode(ids) == "abcdef xy</s>"
    assert trained_segments(byte_tok, ids, targets) == [" xy</s>"]
    assert counts.truncated == 1


def test_truncation_left_keeps_the_field_end(byte_tok: Any) -> None:
    [(ids, _)], _ = encode(
        byte_tok, [{"input": "abcdefghij", "output": "xy"}], max_seq_length=10, truncation_method="left"
    )
    assert byte_tok.decode(ids) == "efghij xy</s>"


def test_truncation_splits_evenly_over_named_fields(byte_tok: Any) -> None:
    row = {"a": "AAAAAAAA", "b": "BBBBBBBB", "output": "z"}
    knobs: dict[str, Any] = {"prompt_template": "{a}|{b}|{output}", "truncation_field": "a, b", "add_eos": False}
    [(ids, _)], _ = encode(byte_tok, [row], max_seq_length=13, **knobs)  # 19 -> 13: 6 to cut, 3 each
    assert byte_tok.decode(ids) == "AAAAA|BBBBB|z"
    [(ids, _)], _ = encode(byte_tok, [row], max_seq_length=12, **knobs)  # 7 to cut: the first field takes 4
    assert byte_tok.decode(ids) == "AAAA|BBBBB|z"
    # A short field gives what it has and the other makes up the rest.
    [(ids, _)], _ = encode(byte_tok, [{**row, "a": "A"}], max_seq_length=8, **knobs)
    assert byte_tok.decode(ids) == "|BBBBB|z"


def test_label_is_cut_only_after_the_truncation_fields(byte_tok: Any) -> None:
    row = {"input": "abcd", "output": "0123456789"}
    # 4 + 11 (" 0123456789") + 1 = 16 > 8: the input goes entirely, then the answer loses its end.
    [(ids, targets)], _ = encode(byte_tok, [row], max_seq_length=8)
    assert byte_tok.decode(ids) == " 0123456"
    assert trained_segments(byte_tok, ids[1:], targets[1:]) == ["0123456"]  # position 0 is never predicted
    # Fields not listed in truncation_field are never cut: once `other` is used up, the answer is.
    row = {"input": "abcd", "other": "xy", "output": "0123"}
    [(ids, targets)], _ = encode(
        byte_tok, [row], max_seq_length=9, prompt_template="{input}:{other}{output}", truncation_field="other"
    )
    assert byte_tok.decode(ids) == "abcd:0123"  # 12 tokens: `other` gives 2, the answer's </s> the last 1
    assert trained_segments(byte_tok, ids, targets) == ["0123"]


def test_fixed_context_longer_than_the_budget_drops_the_row(byte_tok: Any) -> None:
    rows = [{"input": "abcdefghijkl", "output": "xy"}, {"input": "a", "output": "b"}]
    examples, counts = encode(byte_tok, rows, max_seq_length=8, truncation_field="nothing")
    assert len(examples) == 1 and counts.dropped == 1


def test_empty_answer_without_eos_is_dropped_and_counted(byte_tok: Any) -> None:
    examples, counts = encode(
        byte_tok,
        [{"input": "a", "output": ""}, {"input": "b", "output": "c"}],
        prompt_template="{input}{output}",
        add_eos=False,
    )
    assert len(examples) == 1 and counts.dropped == 1 and counts.rows == 2


def test_prompt_for_generation_matches_training_context(byte_tok: Any) -> None:
    config = data_config(prompt_template="Q: {input}\nA: {output}", add_bos=True)
    assert prompt_text(config, "2+2?") == "Q: 2+2?\nA:"
    ids = prompt_ids(config, byte_tok, "2+2?")
    [(train_ids, targets)], _ = encode(
        byte_tok, [{"input": "2+2?", "output": "4"}], prompt_template="Q: {input}\nA: {output}", add_bos=True
    )
    assert ids == train_ids[~targets].tolist()
    assert ids[0] == byte_tok.bos_token_id


def test_labels_are_shifted_next_tokens(byte_tok: Any) -> None:
    from sft_trainer.data.dataset import ExampleDataset, store_from_examples

    examples, _ = encode(byte_tok, [{"input": "ab", "output": "c"}, {"input": "d", "output": "e"}])
    dataset = ExampleDataset(store_from_examples(examples))
    sample = dataset[0]
    # a b ' ' c </s>: at b predict ' ', at ' ' predict c, at c predict </s>; nothing at the end.
    assert byte_tok.decode(sample.input_ids) == "ab c</s>"
    assert sample.labels.tolist() == [IGNORE_INDEX, ord(" "), ord("c"), byte_tok.eos_token_id, IGNORE_INDEX]
    assert dataset.loss_tokens.tolist() == [3, 3] and sample.num_loss_tokens == 3
    assert dataset.lengths.tolist() == [5, 4]


def test_an_empty_output_trains_only_eos_not_a_lone_space(byte_tok: Any, gpt2_tok: Any) -> None:
    for tokenizer in (byte_tok, gpt2_tok):
        [(ids, targets)], _ = encode(tokenizer, [{"input": "Say nothing.", "output": ""}])
        assert tokenizer.decode(ids) == "Say nothing.<|endoftext|>".replace("<|endoftext|>", tokenizer.eos_token)
        assert trained_segments(tokenizer, ids, targets) == [tokenizer.eos_token]


def test_left_truncation_keeps_the_separator_before_the_field(byte_tok: Any) -> None:
    row = {"context": "abcdefghij", "question": "why?", "output": "ok"}
    knobs: dict[str, Any] = {"prompt_template": "Context:\n{context}\nQ: {question}\nA: {output}"}
    length = len("Context:\nabcdefghij\nQ: why?\nA: ok") + 1  # + </s>
    [(ids, targets)], _ = encode(
        byte_tok, [row], max_seq_length=length - 4, truncation_field="context", truncation_method="left", **knobs
    )
    assert byte_tok.decode(ids) == "Context:\nefghij\nQ: why?\nA: ok</s>"  # the newline after "Context:" stays
    [(ids, targets)], _ = encode(
        byte_tok, [row], max_seq_length=length - 2, truncation_field="question", truncation_method="left", **knobs
    )
    assert byte_tok.decode(ids) == "Context:\nabcdefghij\nQ: y?\nA: ok</s>"  # "Q:" keeps its space
    assert trained_segments(byte_tok, ids, targets) == [" ok</s>"]
