"""Arrow schemas of the export formats, for Parquet files.

Messages are ``list<struct<role, content>>``; times are ``timestamp[us, tz=UTC]`` (JSONL writes
the same instants as ISO 8601 strings); ``sampling`` columns hold the completion's sampling
settings as a JSON object in a string, because their keys differ from one generator to the next.
"""
from __future__ import annotations

COMPARISON_META = ("comparison_id", "prompt_id", "reason", "sources", "annotator_ids", "choices", "strengths",
                   "rationales", "time_spent_ms", "voted_at")
PAIR_META = ("checkpoint_chosen", "checkpoint_rejected", "sampling_chosen", "sampling_rejected", "seed_chosen",
             "seed_rejected", "edited_from_chosen", "edited_from_rejected")
UNPAIRED_META = ("checkpoint", "sampling", "seed", "edited_from")
RAW_META = ("reason", "sampling_a", "sampling_b", "seed_a", "seed_b", "edited_from_a", "edited_from_b")


def meta_columns(fmt: str) -> tuple[str, ...]:
    """The columns ``metadata=True`` adds to a format, in order (those a format has already stay put)."""
    if fmt == "raw":
        return RAW_META
    return COMPARISON_META + (UNPAIRED_META if fmt.startswith("kto") else PAIR_META)


def parquet_schema(fmt: str, *, margin: bool = False, metadata: bool = False, confidence: bool = False):
    """The Arrow schema of a format, with TRL's ``margin``, the reliability model's ``confidence`` and the
    metadata columns when asked."""
    import pyarrow as pa  # lazily: only Parquet exports need it

    text, number, real, flag = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    when = pa.timestamp("us", tz="UTC")
    messages = pa.list_(pa.struct([("role", text), ("content", text)]))
    base = {
        "trl": [("prompt", text), ("chosen", text), ("rejected", text)],
        "trl-conversational": [("prompt", messages), ("chosen", messages), ("rejected", messages)],
        "hh-rlhf": [("chosen", text), ("rejected", text)],
        "kto": [("prompt", text), ("completion", text), ("label", flag)],
        "kto-conversational": [("prompt", messages), ("completion", messages), ("label", flag)],
        "pairs": [
            ("prompt_id", number), ("prompt", messages), ("chosen", messages), ("rejected", messages),
            ("tie", flag), ("strength", number), ("annotators", number), ("agreement", real),
        ],
        "raw": [
            ("comparison_id", number), ("prompt_id", number), ("prompt", messages), ("a", text), ("b", text),
            ("checkpoint_a", text), ("checkpoint_b", text), ("choice", text), ("winner", text),
            ("strength", number), ("rationale", text), ("annotator", text), ("source", text),
            ("time_spent_ms", number), ("created_at", when), ("majority", text), ("agreement", real),
            ("votes", number),
        ],
    }[fmt]
    if margin:
        base.append(("margin", real))
    if confidence:
        base.append(("confidence", real))
    if metadata:
        types = {
            "comparison_id": number, "prompt_id": number, "reason": text, "sources": pa.list_(text),
            "annotator_ids": pa.list_(text), "choices": pa.list_(text), "strengths": pa.list_(number),
            "rationales": pa.list_(text), "time_spent_ms": pa.list_(number), "voted_at": pa.list_(when),
        }
        present = {name for name, _ in base}
        for name in meta_columns(fmt):
            if name not in present:
                whole = name.startswith(("seed", "edited_from"))
                base.append((name, number if whole else types.get(name, text)))
    return pa.schema(base)
