"""Generation runs: sample checkpoints on a prompt set and queue their answers as comparisons.

A new candidate is sampled beside the incumbent on the same prompts; each pair of
their answers becomes a high-priority "checkpoint battle" comparison, so human
votes rank the checkpoints. The prompts always include the guard's fixed prompt
set, on which each sampled checkpoint's proxy reward and KL from its base are then
measured (``training.guards``).
"""
from __future__ import annotations

import random

from django.conf import settings as app_settings
from django.db import transaction

from annotate import services
from annotate.artifacts import model_source
from annotate.models import Checkpoint, Comparison, Completion, Project, Prompt
from training import configs, guards
from training.lib.endpoint import EndpointConfig, generate_endpoint
from training.models import TrainingRun
from training.ray_jobs import generate_on_ray, measure_on_ray, on_ray
from training.runs import RunReporter, run_create, run_publishing

KIND = TrainingRun.Kind.GENERATION
BATTLE_PRIORITY = 10


def battle_prompts(project: Project, *, count: int | None, seed: int) -> list[Prompt]:
    """The prompt set for a battle: ``count`` prompts drawn with ``seed`` (all of them for None)."""
    prompts = list(Prompt.objects.filter(project=project).order_by("id"))
    if count is not None and count < len(prompts):
        prompts = sorted(random.Random(seed).sample(prompts, count), key=lambda p: p.pk)
    return prompts


def _generate(checkpoint: Checkpoint, prompts: list[Prompt], sampling: dict, progress, log) -> list:
    """Sample ``prompts`` from the checkpoint's endpoint, or its weights on this worker's device and dtype."""
    messages = [p.messages for p in prompts]
    if checkpoint.endpoint_url:
        config = EndpointConfig(base_url=checkpoint.endpoint_url, model=checkpoint.endpoint_model,
                                **{k: v for k, v in sampling.items() if k != "batch_size"})
        return generate_endpoint(config, messages, progress)
    if not checkpoint.uri:
        raise ValueError(f"checkpoint {checkpoint.name!r} has neither weights (uri) nor an endpoint to sample")
    from training.lib.generation import GenerationConfig, generate_local, resolve_device, resolve_dtype

    # Resolved here, before the weights are read, so the log says where the run is while it runs
    # and a worker told to use a GPU it does not have fails at once.
    device = resolve_device(app_settings.WORKER_DEVICE)
    dtype = resolve_dtype(app_settings.WORKER_DTYPE, device)
    log(f"{checkpoint.name}: sampling on {device} in {dtype}")
    config = GenerationConfig(model=model_source(checkpoint.uri), **sampling, device=device, dtype=dtype)
    return generate_local(config, messages, progress)


def generation_job(run: TrainingRun, reporter: RunReporter) -> None:
    """Sample each checkpoint in ``run.config["checkpoints"]`` on the prompt set; pair the first with the rest.

    The reward-hacking guard's fixed prompts that the battle's set leaves out are sampled in the same
    call (one model load, on the Ray cluster too when the battle is), measured and not stored.
    """
    ids = run.config["checkpoints"]
    settings = configs.generation_settings(settings_of(run.config))
    checkpoints = list(Checkpoint.objects.filter(project=run.project, pk__in=ids))
    checkpoints.sort(key=lambda c: ids.index(c.pk))
    prompts = battle_prompts(run.project, count=settings["prompts"], seed=settings["seed"])
    battled = {p.pk for p in prompts}
    extra = [p for p in guards.guard_prompts(run.project) if p.pk not in battled] if checkpoints else []
    sampling = {key: settings[key] for key in configs.SAMPLING_KEYS}
    per = len(prompts) + len(extra)
    total = per * len(checkpoints)
    by_checkpoint: dict[int, dict[int, Completion]] = {}
    guard_texts: dict[int, dict[int, str]] = {}
    for index, checkpoint in enumerate(checkpoints):
        existing = {c.prompt_id: c for c in Completion.objects.filter(checkpoint=checkpoint, prompt__in=prompts)}
        todo = [p for p in prompts if p.pk not in existing]
        # The guard's fixed prompts outside the battle: an answer from an earlier battle serves, else one is sampled.
        known = {c.prompt_id: c.text for c in Completion.objects.filter(checkpoint=checkpoint, prompt__in=extra)}
        measured = [p for p in extra if p.pk not in known] if checkpoint.uri or checkpoint.endpoint_url else []
        reporter.log(f"{checkpoint.name}: {len(todo)} prompts to sample, {len(existing)} already sampled"
                     + (f"; and {len(measured)} of the guard's fixed prompts, measured, not stored" if measured else ""))
        batch = todo + measured
        offset = index * per + len(existing) + len(known)
        progress = lambda done, _, offset=offset: reporter.progress(offset + done, total)  # noqa: E731
        if batch and checkpoint.uri and not checkpoint.endpoint_url and on_ray(run):  # the weights are sampled on the Ray cluster
            outputs = generate_on_ray(run, reporter, checkpoint=checkpoint, prompts=batch, sampling=sampling,
                                      progress=progress)
        else:
            outputs = _generate(checkpoint, batch, sampling, progress, reporter.log) if batch else []
        with run_publishing(run):  # a process presumed lost that wakes up adds nothing
            for prompt, output in zip(todo, outputs[:len(todo)], strict=True):
                if output.text.strip():
                    existing[prompt.pk], _ = services.completion_get_or_create(
                        prompt=prompt, checkpoint=checkpoint, text=output.text, sampling=output.params, seed=output.seed
                    )
        by_checkpoint[checkpoint.pk] = existing
        guard_texts[checkpoint.pk] = {**{pk: c.text for pk, c in existing.items()}, **known, **{
            p.pk: o.text for p, o in zip(measured, outputs[len(todo):], strict=True) if o.text.strip()}}
        reporter.progress((index + 1) * per, total)
    with run_publishing(run):
        created = _queue_battles(checkpoints, by_checkpoint, seed=settings["seed"])
    reporter.log(f"queued {created} comparisons")
    # The reward-hacking guard: proxy reward and KL from the base, per checkpoint, on the fixed prompt set.
    measured_guards = guards.guard_record(
        project=run.project, checkpoints=checkpoints, samples=guard_texts, log=reporter.log,
        measure=(lambda plan, paths: measure_on_ray(run, reporter, plan, paths)) if on_ray(run) else None)
    run.outputs = {"completions": sum(len(v) for v in by_checkpoint.values()), "comparisons": created,
                   "guard": {c.name: g for c, g in zip(checkpoints, measured_guards, strict=False)}}


def _queue_battles(checkpoints, by_checkpoint, *, seed: int) -> int:
    """Pair the candidate's answers with each rival's on the same prompts (identical texts are not compared)."""
    if len(checkpoints) < 2:
        return 0
    first, *others = checkpoints
    pairs = [
        (mine, theirs)
        for other in others
        for prompt_id, mine in by_checkpoint[first.pk].items()
        if (theirs := by_checkpoint[other.pk].get(prompt_id)) is not None and theirs.text_hash != mine.text_hash
    ]
    return services.comparisons_create(pairs=pairs, reason=Comparison.Reason.BATTLE, priority=BATTLE_PRIORITY,
                                       rng=random.Random(seed))


def settings_of(run_config: dict) -> dict:
    """A generation run's settings: its config less the checkpoints it samples."""
    return {k: v for k, v in run_config.items() if k != "checkpoints"}


def generation_start(
    *, project: Project, checkpoints: list[Checkpoint], config: dict | None = None,
    reason: str = "started by hand", enqueue: bool = True,
) -> TrainingRun:
    """Queue a generation run; the first checkpoint is the candidate battled against the others."""
    if not checkpoints:
        raise ValueError("name at least one checkpoint to sample")
    config = dict(config or {})
    configs.generation_settings(config)
    with transaction.atomic():
        return run_create(project=project, kind=KIND, config={"checkpoints": [c.pk for c in checkpoints], **config},
                          reason=reason, enqueue=enqueue, checkpoint_in=checkpoints[0])
