from django.contrib import admin

from annotate.models import (
    ApiToken,
    Checkpoint,
    Comparison,
    Completion,
    Lease,
    Membership,
    Project,
    Prompt,
    Snapshot,
    Vote,
)
from annotate.queue import comparison_hints_clear


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "votes_per_comparison", "retrain_threshold", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "votes_per_comparison" in form.changed_data:
            comparison_hints_clear(project=obj)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role"]
    list_filter = ["role", "project"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "__str__", "source", "created_at"]
    list_filter = ["project"]
    search_fields = ["content_hash"]


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "state", "parent", "created_at"]
    list_filter = ["project", "state"]


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "checkpoint", "__str__", "created_at"]
    list_filter = ["checkpoint"]
    raw_id_fields = ["prompt"]


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "reason", "priority", "state", "vote_count", "created_at"]
    list_filter = ["project", "state", "reason"]
    raw_id_fields = ["prompt", "completion_a", "completion_b"]


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["comparison", "annotator", "expires_at", "skipped"]
    raw_id_fields = ["comparison"]


@admin.register(Vote)
class VoteAdmin(admin.ModelAdmin):
    list_display = ["id", "comparison", "annotator", "choice", "strength", "source", "created_at"]
    list_filter = ["choice", "source"]
    raw_id_fields = ["comparison", "winner"]


@admin.register(Snapshot)
class SnapshotAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "count", "sha256", "created_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["user", "name", "created_at", "last_used_at"]
    readonly_fields = ["key_hash"]
