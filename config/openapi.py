"""The whole API's OpenAPI document: each app describes its own paths."""
from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from annotate.openapi import SPEC
from training.openapi import PATHS as TRAINING_PATHS

DOCUMENT = {**SPEC, "paths": {**SPEC["paths"], **TRAINING_PATHS}}


@require_GET
def openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(DOCUMENT)
