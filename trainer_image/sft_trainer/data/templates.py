"""Prompt templates of the prompt-response format (NeMo's `prompt_template`).

A template such as `"Question: {input}\\n\\nAnswer: {output}"` is a Python format string over row
fields. The label placeholder must be the very last thing in it: everything before it is the
context (no loss with answer-only loss), the label value is the answer.

Like NeMo's `_separate_template`, a template splits into pieces that are tokenized separately, so
fields can be truncated by token count without re-tokenizing. Whitespace right before a
placeholder belongs to the value that follows (`"Answer: {output}"` -> `"Answer:"`, `" 42"`), which
keeps byte-level BPE tokens (`Ġ42`) the same as in running text.
"""

import string
from dataclasses import dataclass

from sft_trainer.config.data import prompt_template_problem
from sft_trainer.data.errors import DataError
from sft_trainer.data.jsonl import Row, require_str

TEMPLATE_KEY = "<template>"  # the key of literal template text pieces


@dataclass(frozen=True)
class Piece:
    """One piece of a template: literal text (`key` is TEMPLATE_KEY) or a placeholder."""

    key: str
    literal: str = ""  # literal text, or the whitespace that precedes a placeholder


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed, validated prompt template."""

    text: str
    label_key: str
    pieces: tuple[Piece, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """Placeholder names in template order (the label last)."""
        return tuple(p.key for p in self.pieces if p.key != TEMPLATE_KEY)

    @property
    def context_fields(self) -> tuple[str, ...]:
        """Placeholders before the label."""
        return self.fields[:-1]

    def render_pieces(self, row: Row, file: str, line: int) -> list[tuple[str, str]]:
        """`[(key, text), ...]` for one row; the last pair is the label. Fields must be strings.

        A placeholder's text starts with the whitespace the template puts before it (dropped for
        an empty label, which would otherwise train a lone space).
        """
        out: list[tuple[str, str]] = []
        for piece in self.pieces:
            if piece.key == TEMPLATE_KEY:
                out.append((TEMPLATE_KEY, piece.literal))
                continue
            value = require_str(row, piece.key, file, line)
            # An empty answer has no leading space to learn: only its EOS (if any) is trained.
            lead = "" if piece.key == self.label_key and not value else piece.literal
            out.append((piece.key, lead + value))
        return out

    def prompt(self, values: dict[str, str]) -> str:
        """The context text for generation: the template rendered up to (not including) the label."""
        parts: list[str] = []
        for piece in self.pieces[:-1]:
            parts.append(piece.literal if piece.key == TEMPLATE_KEY else piece.literal + values.get(piece.key, ""))
        return "".join(parts)


def parse_template(text: str, label_key: str, *, source: str = "data.prompt_template") -> PromptTemplate:
    """Parse and validate a prompt template; DataError (naming `source`) when it cannot train.

    Rules (`prompt_template_problem`): only plain `{name}` placeholders; `{label_key}` appears
    exactly once and ends the template.
    """
    problem = prompt_template_problem(text, label_key)
    if problem:
        raise DataError(problem, field=source)
    pieces: list[Piece] = []
    for literal, name, _, _ in string.Formatter().parse(text):
        if name is None:
            if literal:
                pieces.append(Piece(TEMPLATE_KEY, literal))
            continue
        stripped = literal.rstrip()
        if stripped:
            pieces.append(Piece(TEMPLATE_KEY, stripped))
        pieces.append(Piece(name, literal[len(stripped) :]))
    return PromptTemplate(text=text, label_key=label_key, pieces=tuple(pieces))
