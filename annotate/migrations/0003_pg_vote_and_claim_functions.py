"""PostgreSQL functions for the annotation hot path: a vote, and a claim, each one round trip.

``annotate.votes`` and ``annotate.queue`` send the same statements one by one inside a
transaction (BEGIN, lock, write, COMMIT: four round trips, each with its own client and
server overhead). On PostgreSQL the common case runs here instead, as one call in its own
implicit transaction. Each statement inside a PL/pgSQL function takes a fresh snapshot, so
"count again under the row lock" means what it means in the Python path.

The functions do only the common case and return no row for anything else (a replay, an
idempotency key used before, a full or closed comparison, a missing one, every candidate
locked by someone else); the caller then takes the general Python path, which tells those
cases apart. SQLite has no such functions and always takes the Python path.

Change the statements here only with a new migration; the Python path in ``annotate.votes``
and ``annotate.queue`` is the reference they follow.
"""
from django.db import migrations

VOTE = r"""
CREATE OR REPLACE FUNCTION annotate_vote_fast(
    p_comparison bigint, p_annotator bigint, p_choice varchar, p_strength smallint, p_rationale text,
    p_time_spent integer, p_key varchar, p_source varchar, p_now timestamptz)
RETURNS TABLE (vote_id bigint, winner_id bigint, time_spent_ms integer, project_id bigint, wanted integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cmp record;
    others bigint;
    spent integer := p_time_spent;
    winner bigint;
    new_id bigint;
BEGIN
    -- The row lock first; what this annotator already has on the comparison is read with it.
    SELECT c.state, c.vote_count, c.completion_a_id, c.completion_b_id, c.project_id,
           p.votes_per_comparison AS wanted,
           EXISTS (SELECT 1 FROM annotate_vote v WHERE v.annotator_id = p_annotator
                   AND (v.comparison_id = c.id OR v.idempotency_key = NULLIF(p_key, ''))) AS earlier,
           (SELECT l.created_at FROM annotate_lease l
             WHERE l.comparison_id = c.id AND l.annotator_id = p_annotator) AS leased_at
      INTO cmp
      FROM annotate_comparison c JOIN annotate_project p ON p.id = c.project_id
     WHERE c.id = p_comparison
       FOR UPDATE OF c;
    IF NOT FOUND OR cmp.earlier OR cmp.state <> 'open' OR cmp.vote_count >= cmp.wanted THEN
        RETURN;
    END IF;
    -- Other people's live leases, counted in a fresh snapshot now that the row is ours.
    SELECT COUNT(*) INTO others FROM annotate_lease
     WHERE comparison_id = p_comparison AND annotator_id <> p_annotator AND expires_at > p_now;
    IF cmp.vote_count + others >= cmp.wanted THEN
        RETURN;
    END IF;
    IF spent IS NULL AND cmp.leased_at IS NOT NULL THEN
        spent := GREATEST(0, floor(EXTRACT(EPOCH FROM p_now - cmp.leased_at) * 1000))::integer;
    END IF;
    winner := CASE p_choice WHEN 'a' THEN cmp.completion_a_id WHEN 'b' THEN cmp.completion_b_id END;
    -- A concurrent replay of the same vote hits the unique constraints here; the caller answers it.
    INSERT INTO annotate_vote (comparison_id, annotator_id, choice, winner_id, strength, rationale,
                               time_spent_ms, idempotency_key, source, created_at)
    VALUES (p_comparison, p_annotator, p_choice, winner, p_strength, p_rationale, spent, p_key, p_source, p_now)
    RETURNING id INTO new_id;
    UPDATE annotate_comparison
       SET vote_count = cmp.vote_count + 1,
           state = CASE WHEN cmp.vote_count + 1 >= cmp.wanted THEN 'closed' ELSE cmp.state END
     WHERE id = p_comparison;
    DELETE FROM annotate_lease WHERE comparison_id = p_comparison AND annotator_id = p_annotator;
    RETURN QUERY SELECT new_id, winner, spent, cmp.project_id, cmp.wanted::integer;
END
$$;
"""

CLAIM = r"""
CREATE OR REPLACE FUNCTION annotate_claim_fast(
    p_project bigint, p_annotator bigint, p_now timestamptz, p_wanted integer, p_lease_seconds integer,
    p_look_for_held boolean)
RETURNS TABLE (id bigint, project_id bigint, prompt_id bigint, completion_a_id bigint, completion_b_id bigint,
               priority integer, reason varchar, state varchar, vote_count integer,
               messages jsonb, text_a text, text_b text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    expires timestamptz := p_now + make_interval(secs => p_lease_seconds);
    pick bigint;
    votes integer;
    others bigint;
    first_expiry timestamptz;
BEGIN
    IF p_look_for_held THEN
        -- The annotator's live lease in this project, on a comparison still open and not voted.
        RETURN QUERY
        SELECT c.id, c.project_id, c.prompt_id, c.completion_a_id, c.completion_b_id, c.priority, c.reason,
               c.state, c.vote_count::integer, pr.messages, a.text, b.text
          FROM annotate_lease l
          JOIN annotate_comparison c ON c.id = l.comparison_id
          JOIN annotate_prompt pr ON pr.id = c.prompt_id
          JOIN annotate_completion a ON a.id = c.completion_a_id
          JOIN annotate_completion b ON b.id = c.completion_b_id
         WHERE l.annotator_id = p_annotator AND l.expires_at > p_now AND NOT l.skipped
           AND c.project_id = p_project AND c.state = 'open'
           AND NOT EXISTS (SELECT 1 FROM annotate_vote v WHERE v.comparison_id = c.id AND v.annotator_id = p_annotator)
         ORDER BY l.created_at
         LIMIT 1;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    FOR attempt IN 1..3 LOOP
        -- The first open pair in queue order that is not marked full, not voted or skipped by this
        -- annotator, with room once other people's live leases are counted; locked rows are passed.
        SELECT c.id, c.vote_count INTO pick, votes
          FROM annotate_comparison c
         WHERE c.project_id = p_project AND c.state = 'open' AND (c.full_until IS NULL OR c.full_until <= p_now)
           AND NOT EXISTS (SELECT 1 FROM annotate_vote v WHERE v.comparison_id = c.id AND v.annotator_id = p_annotator)
           AND NOT EXISTS (SELECT 1 FROM annotate_lease s
                            WHERE s.comparison_id = c.id AND s.annotator_id = p_annotator AND s.skipped)
           AND c.vote_count + (SELECT COUNT(*) FROM annotate_lease o
                                WHERE o.comparison_id = c.id AND o.expires_at > p_now
                                  AND o.annotator_id <> p_annotator) < p_wanted
         ORDER BY c.priority DESC, c.created_at, c.id
         LIMIT 1
           FOR UPDATE OF c SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;  -- nothing left, or all of it locked right now: the caller looks again (and waits)
        END IF;
        SELECT COUNT(*), MIN(o.expires_at) INTO others, first_expiry FROM annotate_lease o
         WHERE o.comparison_id = pick AND o.expires_at > p_now AND o.annotator_id <> p_annotator;
        IF votes + others < p_wanted THEN
            INSERT INTO annotate_lease AS l (comparison_id, annotator_id, expires_at, skipped, created_at)
            VALUES (pick, p_annotator, expires, false, p_now)
            ON CONFLICT (comparison_id, annotator_id)
            DO UPDATE SET expires_at = excluded.expires_at, created_at = excluded.created_at;
            IF votes + others + 1 >= p_wanted THEN
                UPDATE annotate_comparison SET full_until = LEAST(expires, first_expiry) WHERE id = pick;
            END IF;
            -- A lease is a soft reservation (see annotate.queue): its commit need not wait for the disk.
            PERFORM set_config('synchronous_commit', 'off', true);
            RETURN QUERY
            SELECT c.id, c.project_id, c.prompt_id, c.completion_a_id, c.completion_b_id, c.priority, c.reason,
                   c.state, c.vote_count::integer, pr.messages, a.text, b.text
              FROM annotate_comparison c
              JOIN annotate_prompt pr ON pr.id = c.prompt_id
              JOIN annotate_completion a ON a.id = c.completion_a_id
              JOIN annotate_completion b ON b.id = c.completion_b_id
             WHERE c.id = pick;
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END
$$;
"""

DROP = [
    "DROP FUNCTION IF EXISTS annotate_vote_fast(bigint, bigint, varchar, smallint, text, integer, varchar, varchar,"
    " timestamptz)",
    "DROP FUNCTION IF EXISTS annotate_claim_fast(bigint, bigint, timestamptz, integer, integer, boolean)",
]


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(VOTE)
        schema_editor.execute(CLAIM)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in DROP:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("annotate", "0002_comparison_full_until")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
