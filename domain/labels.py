"""Open-Assistant's text labels: names, widgets, texts and which tasks ask for which."""

from __future__ import annotations

# name -> (widget, display text, help text): OA's TextLabel (oasst_shared/schemas/protocol.py), in its order
LABELS: dict[str, tuple[str, str, str | None]] = {
    "spam": ("yes_no", "Seems to be intentionally low-quality or irrelevant", None),
    "fails_task": ("yes_no", "Fails to follow the correct instruction / task", None),
    "lang_mismatch": (
        "flag",
        "Wrong Language",
        "The message is written in a language that differs from the currently selected language.",
    ),
    "pii": ("flag", "Contains personal identifiable information (PII)", None),
    "not_appropriate": ("flag", "Inappropriate", None),
    "hate_speech": (
        "flag",
        "Content is abusive or threatening and expresses prejudice against a protected characteristic",
        "Prejudice refers to preconceived views not based on reason. Protected characteristics "
        "include gender, ethnicity, religion, sexual orientation, and similar characteristics.",
    ),
    "sexual_content": ("flag", "Contains sexual content", None),
    "moral_judgement": ("flag", "Expresses moral judgement", None),
    "political_content": ("flag", "Expresses political views", None),
    "quality": ("likert", "Overall subjective quality rating of the message", None),
    "toxicity": ("likert", "Rude, abusive, profane or insulting content", None),
    "humor": ("likert", "Humorous content including sarcasm", None),
    "helpfulness": ("likert", "Helpfulness of the message", None),
    "creativity": ("likert", "Creativity", None),
    "violence": ("likert", "Violence/abuse/terrorism/self-harm", None),
}

# OA's TreeManagerConfiguration.labels_initial_prompt / labels_prompter_reply / labels_assistant_reply
FULL_PROMPT_LABELS = [
    "spam",
    "lang_mismatch",
    "quality",
    "creativity",
    "humor",
    "toxicity",
    "violence",
    "not_appropriate",
    "pii",
    "hate_speech",
    "sexual_content",
]
FULL_ASSISTANT_LABELS = [
    "spam",
    "lang_mismatch",
    "fails_task",
    "quality",
    "helpfulness",
    "creativity",
    "humor",
    "toxicity",
    "violence",
    "not_appropriate",
    "pii",
    "hate_speech",
    "sexual_content",
]
REPORT_LABELS = [
    "spam",
    "not_appropriate",
    "pii",
    "hate_speech",
    "sexual_content",
    "moral_judgement",
    "political_content",
    "toxicity",
    "violence",
    "quality",
]
MANDATORY_LABELS = ["spam"]
# GET /text_labels/valid_labels without a message: every label but fails_task (OA)
ANY_MESSAGE_LABELS = [n for n in LABELS if n != "fails_task"]


def valid_labels(task_type: str, mode: str) -> list[str]:
    """Simple mode: the mandatory labels, lang_mismatch, and quality for replies (OA's order)."""
    if mode == "simple":
        return [*MANDATORY_LABELS, "lang_mismatch"] + ([] if task_type == "label_initial_prompt" else ["quality"])
    return FULL_ASSISTANT_LABELS if task_type == "label_assistant_reply" else FULL_PROMPT_LABELS


def describe(names: list[str]) -> list[dict]:
    return [{"name": n, "widget": LABELS[n][0], "display_text": LABELS[n][1], "help_text": LABELS[n][2]} for n in names]
