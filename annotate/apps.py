from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"
    verbose_name = "Annotation"

    def ready(self) -> None:
        from annotate import active, reliability
        from annotate.events import on_votes_recorded
        from annotate.signals import votes_recorded

        votes_recorded.connect(on_votes_recorded, dispatch_uid="annotate.events.vote_recorded")
        votes_recorded.connect(reliability.on_votes_recorded, dispatch_uid="annotate.reliability.votes_recorded")
        votes_recorded.connect(active.on_votes_recorded, dispatch_uid="annotate.active.votes_recorded")
