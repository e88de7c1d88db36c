from django.contrib import admin

from rewardmodel.models import RewardModel


@admin.register(RewardModel)
class RewardModelAdmin(admin.ModelAdmin):
    list_display = ["project", "version", "backbone", "votes", "pairs", "accuracy", "state", "created_at"]
    list_filter = ["project", "state"]
    readonly_fields = ["metrics", "config", "artifact_uri", "snapshot"]
