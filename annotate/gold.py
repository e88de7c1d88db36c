"""Gold comparisons: pairs with a known answer, mixed into every annotator's queue to check who reads.

A gold comparison has state ``gold``, so the ordinary queue and vote paths never serve or count it
as a normal pair; ``annotate.queue`` serves one instead of the next pair at the project's
``gold_rate`` (a random draw per claim), to everyone, without an overlap. In the page and the API it
looks exactly like any other pair (the answers' positions are drawn as for any comparison; its
reason is never shown). Its votes are never in a training snapshot or a training export
(``annotate.exports``).

Gold comes from two places:

- **imported**: rows with a prompt, the better answer and the worse one (``gold_import``);
- **generated** from the project's own completions (``gold_generate``): one side is the completion
  as it is, the other the same completion degraded in a way a reader catches and a skimmer may
  not: cut mid-sentence, replaced by another prompt's answer, its sentences shuffled, a paragraph
  repeated, or a number changed (multi-sentence answers only for the last three). The comparison
  records the method and its details in ``gold_method``.

Per person: gold accuracy with a 95% Wilson interval (``gold_accuracy``). After each gold vote,
``gold_check`` applies the project's rule: at ``gold_min_votes`` gold votes or more (counted since
a manager last reinstated them) and accuracy below ``gold_threshold``, the person is excluded: an
``Exclusion`` row with the reason; their votes then leave the training data and the page tells
them. A manager reinstates them (``exclusion_lift``), which is recorded too.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import IO, Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from annotate import services
from annotate.boundary import unstorable
from annotate.import_rows import ImportFailed, body_rows, file_rows, gold_row
from annotate.models import Checkpoint, Comparison, Completion, Exclusion, Project, Vote
from annotate.services import InvalidInput

#: The checkpoint the texts gold makes are attributed to (never battled, never paired by comparisons_build).
GOLD_CHECKPOINT = "gold"
METHODS = ("truncated", "other_prompt", "shuffled", "repeated", "number_changed")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def gold_checkpoint(project: Project) -> Checkpoint:
    return services.checkpoint_get_or_create(project=project, name=GOLD_CHECKPOINT, state=Checkpoint.State.RETIRED,
                                             meta={"gold": True})


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s]


def degrade(text: str, method: str, rng: random.Random, *, other: str | None = None) -> tuple[str, dict] | None:
    """``text`` made worse by ``method``, with what was done; None when the method does not apply."""
    parts = sentences(text)
    if method == "truncated":
        words = text.split()
        if len(words) < 8:
            return None
        keep = rng.randint(max(3, len(words) // 3), max(4, (2 * len(words)) // 3))
        cut = " ".join(words[:keep]).rstrip(".!?,;:")
        return cut, {"method": method, "kept_words": keep, "of_words": len(words)}
    if method == "other_prompt":
        if not other or other.strip() == text.strip():
            return None
        return other, {"method": method}
    if method == "shuffled":
        if len(parts) < 3:
            return None
        order = list(range(len(parts)))
        while order == sorted(order):
            rng.shuffle(order)
        return " ".join(parts[i] for i in order), {"method": method, "order": order}
    if method == "repeated":
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        if len(paragraphs) >= 2:
            i = rng.randrange(len(paragraphs))
            return "\n\n".join(paragraphs[: i + 1] + [paragraphs[i]] + paragraphs[i + 1:]), {"method": method,
                                                                                              "paragraph": i}
        if len(parts) < 2:
            return None
        i = rng.randrange(len(parts))
        return " ".join(parts[: i + 1] + [parts[i]] + parts[i + 1:]), {"method": method, "sentence": i}
    if method == "number_changed":
        if len(parts) < 2:
            return None
        found = list(_NUMBER.finditer(text))
        if not found:
            return None
        match = rng.choice(found)
        old = match.group(0)
        value = float(old)
        new = value + rng.choice([-1, 1]) * max(1, round(abs(value) * rng.uniform(0.2, 0.9)))
        new_text = str(int(new)) if "." not in old else f"{new:.{len(old.split('.')[1])}f}"
        if new_text == old or new_text.startswith("-") and not old.startswith("-"):
            new_text = str(int(value) + 7) if "." not in old else f"{value + 7:.{len(old.split('.')[1])}f}"
        return text[:match.start()] + new_text + text[match.end():], {"method": method, "from": old, "to": new_text}
    raise ValueError(f"unknown gold method {method!r}")


def _gold_pair(project: Project, prompt, good: Completion, bad_text: str, method: dict,
               rng: random.Random) -> Comparison | None:
    bad, _ = services.completion_get_or_create(prompt=prompt, checkpoint=gold_checkpoint(project), text=bad_text)
    comparison, created = services.comparison_create(first=good, second=bad, reason=Comparison.Reason.GOLD, rng=rng)
    if not created:
        return None
    answer = "a" if comparison.completion_a_id == good.pk else "b"
    Comparison.objects.filter(pk=comparison.pk).update(state=Comparison.State.GOLD, gold_answer=answer,
                                                       gold_method=method)
    Project.objects.filter(pk=project.pk).update(gold_count=F("gold_count") + 1)
    project.gold_count += 1
    comparison.state, comparison.gold_answer, comparison.gold_method = Comparison.State.GOLD, answer, method
    return comparison


def gold_generate(*, project: Project, count: int, seed: int = 0,
                  methods: tuple[str, ...] = METHODS) -> list[Comparison]:
    """Up to ``count`` new gold comparisons from the project's completions (each method in turn)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidInput(f"gold methods must be drawn from {list(METHODS)}, not {unknown or methods}")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 10_000:
        raise InvalidInput("count must be a whole number from 1 to 10,000")
    rng = random.Random(seed)
    pool = list(Completion.objects.filter(prompt__project=project).exclude(checkpoint__name=GOLD_CHECKPOINT)
                .select_related("prompt").order_by("pk"))
    if len({c.prompt_id for c in pool}) < 2:
        raise InvalidInput("gold needs completions for at least two prompts; import or generate some first")
    rng.shuffle(pool)
    made: list[Comparison] = []
    turn = 0
    with transaction.atomic():
        for good in pool:
            if len(made) >= count:
                break
            for step in range(len(methods)):
                method = methods[(turn + step) % len(methods)]
                other = None
                if method == "other_prompt":
                    others = [c for c in pool if c.prompt_id != good.prompt_id]
                    other = rng.choice(others).text if others else None
                degraded = degrade(good.text, method, rng, other=other)
                if degraded is None:
                    continue
                comparison = _gold_pair(project, good.prompt, good, degraded[0], degraded[1], rng)
                if comparison is not None:
                    made.append(comparison)
                    turn += 1
                    break
    return made


def gold_import(*, project: Project, rows: list, seed: int = 0) -> list[Comparison]:
    """Gold comparisons from rows ``{"prompt": text or messages, "chosen": better, "rejected": worse}``;
    all or nothing: ImportFailed names the first bad row (its 1-based place, as ``line``) and field."""
    return _gold_import(project, body_rows(rows), seed)


def gold_import_file(*, project: Project, stream: IO[bytes], filename: str, seed: int = 0) -> list[Comparison]:
    """Gold comparisons from a JSONL file of such rows, read and checked as any import file is
    (``IMPORT_MAX_BYTES``, UTF-8); all or nothing: ImportFailed names the line and the field."""
    return _gold_import(project, file_rows(stream, filename), seed)


def _gold_import(project: Project, numbered: list[tuple[int, Any]], seed: int) -> list[Comparison]:
    checked = [gold_row(line, row) for line, row in numbered]  # every row, before anything is written
    rng = random.Random(seed)
    made: list[Comparison] = []
    with transaction.atomic():
        checkpoint = gold_checkpoint(project)
        for row in checked:
            try:
                prompt, _ = services.prompt_get_or_create(project=project, messages=row.messages, source="gold")
            except InvalidInput as error:
                raise ImportFailed(str(error), line=row.line, field="prompt") from None
            good, _ = services.completion_get_or_create(prompt=prompt, checkpoint=checkpoint, text=row.chosen)
            comparison = _gold_pair(project, prompt, good, row.rejected, {"method": "imported"}, rng)
            if comparison is not None:
                made.append(comparison)
    return made


@dataclass(frozen=True)
class GoldAccuracy:
    votes: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.votes if self.votes else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% Wilson score interval of the accuracy."""
        if not self.votes:
            return None
        n, p, z = self.votes, self.correct / self.votes, 1.959964
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def gold_accuracy(*, project: Project, since=None) -> dict[int, GoldAccuracy]:
    """Per annotator id: gold votes and how many match the known answer (since ``since`` if given)."""
    votes = Vote.objects.filter(comparison__project=project, comparison__state=Comparison.State.GOLD)
    if since is not None:
        votes = votes.filter(created_at__gt=since)
    tally: dict[int, list[int]] = {}
    for annotator_id, choice, answer in votes.values_list("annotator_id", "choice", "comparison__gold_answer"):
        entry = tally.setdefault(annotator_id, [0, 0])
        entry[0] += 1
        entry[1] += choice == answer
    return {user: GoldAccuracy(votes=n, correct=k) for user, (n, k) in tally.items()}


def excluded_ids(project: Project) -> set[int]:
    """The people whose votes are out of the project's training data now."""
    return set(Exclusion.objects.standing(project).values_list("user_id", flat=True))


def gold_check(*, project: Project, user) -> Exclusion | None:
    """Apply the gold rule to ``user`` after a gold vote: the new Exclusion, or None."""
    if Exclusion.objects.standing(project).filter(user=user).exists():
        return None
    lifted = (Exclusion.objects.filter(project=project, user=user).exclude(lifted_at=None)
              .order_by("-lifted_at").values_list("lifted_at", flat=True).first())
    score = gold_accuracy(project=project, since=lifted).get(user.pk)
    if score is None or score.votes < project.gold_min_votes or score.accuracy >= project.gold_threshold:
        return None
    since = f" since they were reinstated on {lifted:%Y-%m-%d %H:%M} UTC" if lifted else ""
    return Exclusion.objects.create(
        project=project, user=user, gold_votes=score.votes, gold_correct=score.correct,
        reason=(f"gold accuracy {score.accuracy:.0%} ({score.correct} of {score.votes} gold pairs{since}) is below "
                f"the project's threshold of {project.gold_threshold:.0%}"),
    )


def exclusion_lift(*, project: Project, user_id, by, reason: str = "") -> Exclusion:
    if not isinstance(reason, str) or len(reason) > 2000 or unstorable(reason, "reason"):
        raise InvalidInput("the reason must be plain text of at most 2,000 characters")
    exclusion = Exclusion.objects.standing(project).filter(user_id=user_id).first() \
        if isinstance(user_id, int) else None
    if exclusion is None:
        raise InvalidInput(f"nobody with id {user_id!r:.20} is excluded in {project.slug}")
    Exclusion.objects.filter(pk=exclusion.pk).update(lifted_at=timezone.now(), lifted_by=by, lift_reason=reason.strip())
    exclusion.refresh_from_db()
    return exclusion


def exclusion_add(*, project: Project, user_id, by, reason: str) -> Exclusion:
    """A manager excludes a person by hand (the reason is required and recorded)."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 2000 or unstorable(reason, "reason"):
        raise InvalidInput("give a reason: plain text of at most 2,000 characters")
    if not isinstance(user_id, int) or not project.memberships.filter(user_id=user_id).exists():
        raise InvalidInput(f"nobody with id {user_id!r:.20} is a member of {project.slug}")
    if Exclusion.objects.standing(project).filter(user_id=user_id).exists():
        raise InvalidInput("this person is excluded already")
    return Exclusion.objects.create(project=project, user_id=user_id, created_by=by, reason=reason.strip())
