"""Open-Assistant's text labels: names, widgets and which tasks ask for which."""

from __future__ import annotations

# name -> (widget, display text)
LABELS: dict[str, tuple[str, str]] = {
    "spam": ("yes_no", "Seems to be intentionally low-quality or irrelevant"),
    "fails_task": ("yes_no", "Fails to follow the correct instruction / task"),
    "lang_mismatch": ("flag", "Wrong Language"),
    "pii": ("flag", "Contains personal identifiable information (PII)"),
    "not_appropriate": ("flag", "Inappropriate for customer assistant"),
    "hate_speech": ("flag", "Content is abusive or threatening and expresses prejudice against a protected characteristic"),  # noqa: E501
    "sexual_content": ("flag", "Contains sexual content"),
    "moral_judgement": ("flag", "Expresses moral judgement"),
    "political_content": ("flag", "Expresses political views"),
    "quality": ("likert", "Quality"),
    "toxicity": ("likert", "Rude / Toxic"),
    "humor": ("likert", "Humorous"),
    "helpfulness": ("likert", "Helpful"),
    "creativity": ("likert", "Creative"),
    "violence": ("likert", "Violent / Harmful"),
}

FULL_PROMPT_LABELS = [
    "spam", "lang_mismatch", "quality", "creativity", "humor", "toxicity", "violence",
    "not_appropriate", "pii", "hate_speech", "sexual_content",
]
FULL_ASSISTANT_LABELS = [*FULL_PROMPT_LABELS, "fails_task", "helpfulness"]
REPORT_LABELS = [
    "spam", "not_appropriate", "pii", "hate_speech", "sexual_content", "moral_judgement",
    "political_content", "toxicity", "violence", "quality",
]
MANDATORY_LABELS = ["spam"]


def valid_labels(task_type: str, mode: str) -> list[str]:
    if mode == "simple":
        return ["spam", "lang_mismatch"] + ([] if task_type == "label_initial_prompt" else ["quality"])
    return FULL_ASSISTANT_LABELS if task_type == "label_assistant_reply" else FULL_PROMPT_LABELS


def describe(names: list[str]) -> list[dict]:
    return [{"name": n, "widget": LABELS[n][0], "display_text": LABELS[n][1], "help_text": None} for n in names]
