"""Console forms: the runs filter, one start form per kind of run, promotion, snapshot freezing.

Forms only parse and check ranges; ``training.starts.run_start`` does the rest, and its
ValueErrors are shown on the form. Each start form's ``start_kwargs()`` is the keyword arguments
of ``run_start``, and its initial values are ``training.configs.run_defaults`` (what the API, the
commands and the loop use when a setting is left out).
"""
from __future__ import annotations

import json

from django import forms

from annotate.models import Checkpoint, Comparison, Snapshot, Vote
from rewardmodel.models import RewardModel
from training.configs import run_defaults
from training.models import LoopSettings, TrainingRun
from training.starts import default_inputs

ANY = [("", "any")]


def _number(**attrs) -> forms.NumberInput:
    return forms.NumberInput(attrs={"step": "any", **attrs})


def _mode() -> forms.ChoiceField:
    """What trains (`training.lib.modes`); left empty, "auto"."""
    return forms.ChoiceField(
        required=False,
        choices=[("auto", "auto: by model size and free GPU memory"), ("full", "every weight"),
                 ("lora", "LoRA adapters"), ("qlora", "QLoRA: adapters over a 4-bit base (CUDA GPU)")],
        help_text="Auto: full fine-tuning on a CPU; on a GPU the first of full, LoRA, QLoRA that fits its memory.",
    )


def _parallel() -> forms.ChoiceField:
    """How several GPUs hold the model (`training.lib.sharding.resolve_parallel`); left empty, "auto"."""
    return forms.ChoiceField(
        required=False, label="Several GPUs",
        choices=[("auto", "auto: shard full fine-tuning, replicate adapters"),
                 ("shard", "shard weights, gradients and optimizer state (full fine-tuning)"),
                 ("replicate", "a whole copy on every GPU")],
        help_text="Only matters with more than one GPU.",
    )


def _world_size() -> forms.IntegerField:
    """How many processes (GPUs) run the job under torchrun; left empty, the worker's WORKER_WORLD_SIZE."""
    return forms.IntegerField(
        required=False, min_value=1, max_value=64, label="GPUs",
        help_text="Processes under torchrun, one per GPU of the worker; empty: the worker's WORKER_WORLD_SIZE.",
    )


class RunFilterForm(forms.Form):
    kind = forms.ChoiceField(choices=ANY + TrainingRun.Kind.choices, required=False)
    state = forms.ChoiceField(choices=ANY + TrainingRun.State.choices, required=False)


class StartForm(forms.Form):
    """Fields every kind shares: extra settings as JSON, and why the run is started."""

    kind: str = ""
    fields_in_config: tuple[str, ...] = ()
    extra = forms.CharField(
        required=False,
        label="More settings (JSON object)",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": '{"seed": 1}'}),
        help_text="Any other setting of this kind of run, merged into the ones above.",
    )
    reason = forms.CharField(required=False, max_length=200, help_text="Recorded on the run.")

    def __init__(self, *args, project, **kwargs):
        self.project = project
        super().__init__(*args, **kwargs)
        self.order_fields([name for name in self.fields if name not in ("extra", "reason")] + ["extra", "reason"])
        defaults = run_defaults(self.kind)
        for name in self.fields_in_config:
            self.fields[name].initial = defaults[name]
        for name, value in default_inputs(project, self.kind).items():
            self.fields[name].initial = value

    def initial_config(self) -> dict:
        """The settings a manager starts with before changing anything."""
        return {name: self.fields[name].initial for name in self.fields_in_config}

    def clean_mode(self) -> str:
        return self.cleaned_data["mode"] or "auto"

    def clean_parallel(self) -> str:
        return self.cleaned_data["parallel"] or "auto"

    def clean_extra(self) -> dict:
        text = self.cleaned_data["extra"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as error:
            raise forms.ValidationError(f"This is not valid JSON: {error}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Give a JSON object, like {"seed": 1}.')
        repeated = sorted(set(value) & set(self.fields_in_config))
        if repeated:
            raise forms.ValidationError(f"Set {', '.join(repeated)} in the fields above, not here.")
        return value

    def config(self) -> dict:
        data = self.cleaned_data
        chosen = {name: data[name] for name in self.fields_in_config}
        if chosen.get("world_size") is None:
            chosen.pop("world_size", None)  # left empty: the worker decides when the run starts
        return {**chosen, **data["extra"]}

    def start_kwargs(self) -> dict:
        return {"kind": self.kind, "config": self.config(), "reason": self.cleaned_data["reason"]}


class RewardModelStartForm(StartForm):
    kind = TrainingRun.Kind.REWARD_MODEL
    fields_in_config = ("backbone", "epochs", "batch_size", "max_length", "learning_rate", "loss", "eval_fraction",
                        "mode", "parallel", "world_size")
    backbone = forms.CharField(max_length=300, help_text="An alias (all-minilm-l6-v2, smollm2), a local folder or a hub id.")
    epochs = forms.FloatField(min_value=0.01, max_value=100, widget=_number())
    batch_size = forms.IntegerField(min_value=1, max_value=1024)
    max_length = forms.IntegerField(min_value=8, max_value=32768, help_text="Tokens per prompt + answer.")
    learning_rate = forms.FloatField(min_value=1e-8, max_value=1.0, widget=_number())
    loss = forms.ChoiceField(
        choices=[("bt", "Bradley–Terry (ties skipped)"), ("bt_margin", "Bradley–Terry with strength margins"),
                 ("davidson", "Davidson (learns from ties)"), ("rao_kupper", "Rao–Kupper (learns from ties)")],
    )
    eval_fraction = forms.FloatField(
        min_value=0.0, max_value=0.5, widget=_number(), help_text="Share of prompts held out."
    )
    mode = _mode()
    parallel = _parallel()
    world_size = _world_size()


def _checkpoints(project):
    return Checkpoint.objects.filter(project=project).newest_first()


class DPOStartForm(StartForm):
    kind = TrainingRun.Kind.DPO
    fields_in_config = ("beta", "loss", "learning_rate", "epochs", "batch_size", "mode", "parallel", "world_size")
    checkpoint = forms.ModelChoiceField(queryset=Checkpoint.objects.none(), help_text="The policy to improve.")
    snapshot = forms.ModelChoiceField(queryset=Snapshot.objects.none(), required=False,
                                      empty_label="a fresh snapshot of the votes, frozen now",
                                      help_text="The preference pairs to learn from.")
    beta = forms.FloatField(min_value=0.001, max_value=10, widget=_number(),
                            help_text="Pull towards the reference policy.")
    loss = forms.ChoiceField(choices=[("sigmoid", "DPO"), ("ipo", "IPO"), ("robust", "robust DPO")])
    learning_rate = forms.FloatField(min_value=1e-9, max_value=1e-2, widget=_number())
    epochs = forms.FloatField(min_value=0.01, max_value=100, widget=_number())
    batch_size = forms.IntegerField(min_value=1, max_value=512)
    mode = _mode()
    parallel = _parallel()
    world_size = _world_size()

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, project=project, **kwargs)
        self.fields["checkpoint"].queryset = _checkpoints(project)
        self.fields["snapshot"].queryset = Snapshot.objects.filter(project=project).order_by("-created_at", "-id")

    def start_kwargs(self) -> dict:
        return {**super().start_kwargs(), "checkpoint": self.cleaned_data["checkpoint"],
                "snapshot": self.cleaned_data["snapshot"]}


class PPOStartForm(StartForm):
    kind = TrainingRun.Kind.PPO
    fields_in_config = ("kl_coef", "learning_rate", "steps", "batch_size", "mode", "parallel", "world_size")
    checkpoint = forms.ModelChoiceField(queryset=Checkpoint.objects.none(), help_text="The policy to improve.")
    reward_model = forms.ModelChoiceField(queryset=RewardModel.objects.none(), help_text="The reward to maximise.")
    kl_coef = forms.FloatField(min_value=0.0, max_value=10, widget=_number(),
                               help_text="KL penalty towards the reference policy.")
    learning_rate = forms.FloatField(min_value=1e-9, max_value=1e-2, widget=_number())
    steps = forms.IntegerField(min_value=1, max_value=100_000)
    batch_size = forms.IntegerField(min_value=1, max_value=1024, help_text="Rollouts per step.")
    mode = _mode()
    parallel = _parallel()
    world_size = _world_size()

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, project=project, **kwargs)
        self.fields["checkpoint"].queryset = _checkpoints(project)
        models = RewardModel.objects.filter(project=project, state=RewardModel.State.PUBLISHED).order_by("-version")
        self.fields["reward_model"].queryset = models
        self.fields["reward_model"].label_from_instance = lambda rm: f"v{rm.version} ({rm.backbone})"

    def start_kwargs(self) -> dict:
        return {**super().start_kwargs(), "checkpoint": self.cleaned_data["checkpoint"],
                "reward_model": self.cleaned_data["reward_model"]}


class GenerationStartForm(StartForm):
    kind = TrainingRun.Kind.GENERATION
    fields_in_config = ("prompts", "temperature", "top_p", "max_new_tokens", "seed")
    checkpoint = forms.ModelChoiceField(queryset=Checkpoint.objects.none(), label="Candidate",
                                        help_text="The checkpoint to sample.")
    rivals = forms.ModelMultipleChoiceField(
        queryset=Checkpoint.objects.none(), required=False,
        help_text="Sampled on the same prompts; each answer pair becomes a battle comparison.",
    )
    prompts = forms.IntegerField(min_value=1, max_value=1_000_000, required=False,
                                 help_text="Prompts drawn from the project (empty: all of them).")
    temperature = forms.FloatField(min_value=0.0, max_value=2.0, widget=_number())
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, widget=_number())
    max_new_tokens = forms.IntegerField(min_value=1, max_value=8192)
    seed = forms.IntegerField(min_value=0)

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, project=project, **kwargs)
        self.fields["checkpoint"].queryset = self.fields["rivals"].queryset = _checkpoints(project)

    def clean(self) -> dict:
        data = super().clean()
        candidate, rivals = data.get("checkpoint"), data.get("rivals") or []
        if candidate is not None and candidate in rivals:
            self.add_error("rivals", f"{candidate.name} is the candidate; it cannot also be its own rival.")
        return data

    def start_kwargs(self) -> dict:
        data = self.cleaned_data
        return {**super().start_kwargs(), "checkpoint": data["checkpoint"], "rivals": list(data["rivals"])}


START_FORMS: dict[str, type[StartForm]] = {
    form.kind: form for form in (RewardModelStartForm, DPOStartForm, PPOStartForm, GenerationStartForm)
}


class PromoteForm(forms.Form):
    override_reason = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


class FreezeForm(forms.Form):
    note = forms.CharField(required=False, max_length=200, help_text="Recorded with the snapshot.")
    sources = forms.MultipleChoiceField(
        choices=Vote.Source.choices, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked for every source.",
    )
    reasons = forms.MultipleChoiceField(
        choices=Comparison.Reason.choices, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked for every reason.",
    )
    closed_only = forms.BooleanField(required=False, label="Only comparisons that have all their votes")

    def filters(self) -> dict:
        data = self.cleaned_data
        filters: dict = {key: data[key] for key in ("sources", "reasons") if data[key]}
        if data["closed_only"]:
            filters["closed_only"] = True
        if data["note"].strip():
            filters["note"] = data["note"].strip()
        return filters


class LoopSettingsForm(forms.ModelForm):
    """How the project's flywheel turns by itself: on or off, DPO or PPO, battles, and automatic promotion."""

    class Meta:
        model = LoopSettings
        fields = ["enabled", "method", "battle_prompts", "auto_promote", "promote_min_votes", "train_on"]

    def clean_battle_prompts(self) -> int:
        value = self.cleaned_data["battle_prompts"]
        if not 1 <= value <= 10_000:
            raise forms.ValidationError("Between 1 and 10,000 prompts per battle.")
        return value

    def clean_promote_min_votes(self) -> int:
        value = self.cleaned_data["promote_min_votes"]
        if not 1 <= value <= 100_000:
            raise forms.ValidationError("Between 1 and 100,000 battle votes.")
        return value
