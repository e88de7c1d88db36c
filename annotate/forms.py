from __future__ import annotations

from django import forms

from annotate.models import Project

IMPORT_KINDS = [
    ("prompts", "Prompts (JSONL with prompt or messages, or CSV)"),
    ("completions", "Completions (JSONL with prompt, checkpoint, text)"),
    ("preferences", "Preference pairs in TRL format (prompt, chosen, rejected)"),
]


class ProjectSettingsForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = ["name", "guidelines", "votes_per_comparison", "retrain_threshold", "lease_seconds"]
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 10})}

    def clean_votes_per_comparison(self) -> int:
        value = self.cleaned_data["votes_per_comparison"]
        if not 1 <= value <= 20:
            raise forms.ValidationError("Between 1 and 20 people per comparison.")
        return value

    def clean_lease_seconds(self) -> int:
        value = self.cleaned_data["lease_seconds"]
        if not 30 <= value <= 24 * 3600:
            raise forms.ValidationError("Between 30 seconds and a day.")
        return value


class ImportForm(forms.Form):
    kind = forms.ChoiceField(choices=IMPORT_KINDS)
    file = forms.FileField()
