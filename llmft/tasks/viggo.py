"""ViGGO (video-game dialogue): a sentence in, its meaning representation out.

`<START_TEXT>{target}<END_TEXT><START_MR>{meaning_representation}<END_MR>`, e.g. the MR
`give_opinion(name[Iron Tide], rating[good], genres[strategy])`. `<END_MR>` is the stop token.
"""

from __future__ import annotations

from llmft.tasks.base import Example, HubSource, Task, marked_example, text_field


def format_viggo(row: dict) -> Example:
    return marked_example(
        [("<START_TEXT>", text_field(row, "target"), "<END_TEXT>")],
        ("<START_MR>", text_field(row, "meaning_representation"), "<END_MR>"),
    )


TASK = Task(
    name="viggo",
    required_fields=("target", "meaning_representation"),
    special_tokens=("<START_TEXT>", "<END_TEXT>", "<START_MR>", "<END_MR>"),
    stop_token="<END_MR>",
    format=format_viggo,
    metrics="llmft.eval.metrics.viggo",
    primary_metric="exact_match",
    answer_field="meaning_representation",
    samples="llmft.data.samples.viggo",
    hub=HubSource(path="GEM/viggo"),
)
