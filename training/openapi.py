"""OpenAPI paths of the training API, merged into the document served at /api/openapi.json."""
from __future__ import annotations

_SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_RUN = {"description": "the run", "content": {"application/json": {"schema": {"type": "object"}}}}
_MANAGERS = {"403": {"description": "managers only"}, "401": {"description": "missing or bad token"}}

PATHS: dict = {
    "/api/projects/{slug}/reward-models/train": {
        "post": {
            "summary": "Queue a reward-model training run (managers); an alias of POST /api/projects/{slug}/runs "
                       "with kind reward_model",
            "parameters": [_SLUG],
            "requestBody": {
                "content": {"application/json": {"schema": {"type": "object", "properties": {"config": {"type": "object"}}}}}
            },
            "responses": {"202": _RUN, "400": {"description": "a setting is invalid"}, **_MANAGERS},
        }
    },
    "/api/projects/{slug}/reward-models": {
        "get": {
            "summary": "Reward-model versions with their metrics (managers)",
            "parameters": [_SLUG],
            "responses": {"200": {"description": "versions"}, **_MANAGERS},
        }
    },
    "/api/projects/{slug}/runs": {
        "post": {
            "summary": "Start a run of any kind (managers): reward_model, dpo, ppo or generation",
            "parameters": [_SLUG],
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["kind"],
                            "properties": {
                                "kind": {"enum": ["reward_model", "dpo", "ppo", "generation"]},
                                "config": {"type": "object", "description": "settings; the rest are the defaults "
                                           "the console's form shows"},
                                "checkpoint": {"type": "string", "description": "dpo, ppo: default the incumbent; "
                                               "generation: default the newest candidate"},
                                "rivals": {"type": "array", "items": {"type": "string"},
                                           "description": "generation: default the incumbent"},
                                "snapshot": {"type": "integer", "description": "dpo: default the latest reward "
                                             "model's snapshot"},
                                "reward_model": {"type": "integer", "description": "ppo: a version; default the "
                                                 "latest"},
                                "prompts": {"type": ["integer", "null"],
                                            "description": "generation: same as config.prompts (ignored otherwise)"},
                            },
                        }
                    }
                }
            },
            "responses": {"202": _RUN, "400": {"description": "invalid, unknown or missing input, named"},
                          **_MANAGERS},
        }
    },
    "/api/runs/{id}": {
        "get": {"summary": "A run's state and progress (managers)", "parameters": [_ID], "responses": {"200": _RUN, **_MANAGERS}}
    },
    "/api/runs/{id}/cancel": {
        "post": {"summary": "Cancel a run at its next step (managers)", "parameters": [_ID], "responses": {"200": _RUN, **_MANAGERS}}
    },
}
