"""The hot-path functions plan every statement as the point lookup it is, whatever the statistics say.

PL/pgSQL caches a plan per statement for the life of a connection. Planned while the vote and
lease tables are empty or freshly vacuumed (a new project, or the first minute after a restore,
before autovacuum has analyzed them), the lookups in ``annotate_vote_fast`` and
``annotate_claim_fast`` became sequential scans and hash anti joins over the whole vote table
and every dead lease, and stayed so: measured, the database's CPU per vote grew from 1.5 ms to
3.5 ms within 40 s at 400 votes/s. Every statement in them has an index that answers it, so
sequential scans and hash or merge joins are turned off for the functions' own statements only.
"""
from django.db import migrations

FUNCTIONS = [
    "annotate_vote_fast(bigint, bigint, varchar, smallint, text, integer, varchar, varchar, timestamptz)",
    "annotate_claim_fast(bigint, bigint, timestamptz, integer, integer, boolean)",
]
SETTINGS = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for function in FUNCTIONS:
            for name in SETTINGS:
                schema_editor.execute(f"ALTER FUNCTION {function} SET {name} = off")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for function in FUNCTIONS:
            for name in SETTINGS:
                schema_editor.execute(f"ALTER FUNCTION {function} RESET {name}")


class Migration(migrations.Migration):
    dependencies = [("annotate", "0003_pg_vote_and_claim_functions")]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
