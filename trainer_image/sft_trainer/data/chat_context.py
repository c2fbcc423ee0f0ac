"""The context of a chat prompt: earlier turns, and the defaults the training conversations used most."""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class ChatTurn:
    """An earlier turn of the conversation (`label`: a NeMo assistant turn's SteerLM label)."""

    role: Role
    text: str
    label: str | None = None


@dataclass(frozen=True)
class ChatDefaults:
    """What the training conversations used most: system prompt, assistant label, type and role names."""

    system: str = ""
    label: str | None = None
    type: str | None = None
    user: str = "User"
    assistant: str = "Assistant"

    @classmethod
    def from_stats(cls, stats: dict[str, Any] | None) -> "ChatDefaults":
        """From the `chat` block of the data stats (or sft.json); missing keys keep the defaults."""
        known = {key: value for key, value in (stats or {}).items() if key in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class ChatTally:
    """Counts of the training conversations' system prompts, labels, types and role names."""

    systems: Counter[str] = field(default_factory=Counter)
    labels: Counter[str | None] = field(default_factory=Counter)
    types: Counter[str | None] = field(default_factory=Counter)
    users: Counter[str] = field(default_factory=Counter)
    assistants: Counter[str] = field(default_factory=Counter)

    def most_common(self) -> dict[str, Any]:
        """The `chat` stats block: each field's most frequent value (ties: the first seen)."""

        def top(counter: Counter[Any], default: Any) -> Any:
            return counter.most_common(1)[0][0] if counter else default

        return {
            "system": top(self.systems, ""),
            "label": top(self.labels, None),
            "type": top(self.types, None),
            "user": top(self.users, "User"),
            "assistant": top(self.assistants, "Assistant"),
        }
