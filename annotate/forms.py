from __future__ import annotations

from django import forms

from annotate.models import Project, Vote

IMPORT_KINDS = [
    ("prompts", "Prompts (JSONL with prompt or messages, or CSV)"),
    ("completions", "Completions (JSONL with prompt, checkpoint, text)"),
    ("preferences", "Preference pairs in TRL format (prompt, chosen, rejected)"),
]


class ProjectSettingsForm(forms.ModelForm):
    training_sources = forms.MultipleChoiceField(
        choices=Vote.Source.choices, widget=forms.CheckboxSelectMultiple, required=True,
        help_text="Votes of these sources reach training snapshots. AI feedback is off by default: tick it to "
                  "train on the LLM judge's votes too.",
    )

    class Meta:
        model = Project
        fields = ["name", "guidelines", "votes_per_comparison", "retrain_threshold", "lease_seconds",
                  "training_sources", "gold_rate", "gold_threshold", "gold_min_votes", "aggregation",
                  "reliability_every", "selection", "serve_per_prompt"]
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 10})}

    def clean_gold_rate(self) -> float:
        value = self.cleaned_data["gold_rate"]
        if not 0.0 <= value <= 0.5:
            raise forms.ValidationError("Between 0 (no gold) and 0.5.")
        return value

    def clean_gold_threshold(self) -> float:
        value = self.cleaned_data["gold_threshold"]
        if not 0.0 <= value <= 1.0:
            raise forms.ValidationError("An accuracy between 0 and 1 (0 never excludes anyone).")
        return value

    def clean_gold_min_votes(self) -> int:
        value = self.cleaned_data["gold_min_votes"]
        if not 1 <= value <= 1000:
            raise forms.ValidationError("Between 1 and 1,000 gold votes.")
        return value

    def clean_votes_per_comparison(self) -> int:
        value = self.cleaned_data["votes_per_comparison"]
        if not 1 <= value <= 20:
            raise forms.ValidationError("Between 1 and 20 people per comparison.")
        return value

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Active selection's settings are kept as they are when a post leaves them out (older forms, scripts).
        for name in ("selection", "serve_per_prompt"):
            self.fields[name].required = False

    def clean_selection(self) -> str:
        return self.cleaned_data["selection"] or self.instance.selection

    def clean_serve_per_prompt(self) -> int:
        value = self.cleaned_data["serve_per_prompt"]
        if value is None:
            return self.instance.serve_per_prompt
        if not 0 <= value <= 20:
            raise forms.ValidationError("Between 0 (serve every candidate pair) and 20 pairs per prompt.")
        return value

    def clean_lease_seconds(self) -> int:
        value = self.cleaned_data["lease_seconds"]
        if not 30 <= value <= 24 * 3600:
            raise forms.ValidationError("Between 30 seconds and a day.")
        return value


class ImportForm(forms.Form):
    kind = forms.ChoiceField(choices=IMPORT_KINDS)
    file = forms.FileField()
