from django.contrib import admin

from training.models import RunStep, TrainingRun


class RunStepInline(admin.TabularInline):
    model = RunStep
    extra = 0
    readonly_fields = ["step", "metrics", "created_at"]


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "state", "progress", "worker", "created_at", "finished_at"]
    list_filter = ["project", "kind", "state"]
    readonly_fields = ["log_tail", "error", "config", "outputs"]
    inlines = [RunStepInline]
