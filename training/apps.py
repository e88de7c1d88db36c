from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        from annotate.signals import votes_recorded
        from training.receivers import on_votes_recorded

        votes_recorded.connect(on_votes_recorded, dispatch_uid="training.retrain_if_due")
