"""``tasklight_cut_strings(value, chars)`` on PostgreSQL: a JSON value with
every string longer than ``chars`` characters cut to ``chars``, its last one
an ellipsis, at any depth. The home page reads tasks' parameters and results
through it (workloads/views.py), so a task with 1 MiB of text costs the page
a few hundred bytes from the database instead of the megabyte
(docs/benchmarks.md, "Large tasks"). Only adds a function: code of the
release before never calls it. SQLite (embedded mode) gets none; the page
cuts there in Python."""

from typing import Any

from django.db import migrations

# Object keys are kept whole, as the page's Python cut keeps them. The value
# is detoasted once (``#> '{}'``): each use of a column's TOAST pointer would
# read and decompress it again. A string is longer than ``chars`` characters
# when its first ``chars`` are not all of it (counting its characters would
# walk the whole megabyte). A container whose JSON text is at most ``chars``
# bytes holds no string to cut and is passed whole, without a walk (a JSON
# string of n characters is at least n + 2 bytes of text).
CREATE = """
CREATE OR REPLACE FUNCTION tasklight_cut_strings(value jsonb, chars integer) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $function$
DECLARE
    whole jsonb := value #> '{}';
    kind text := jsonb_typeof(whole);
    string text;
BEGIN
    IF kind = 'string' THEN
        string := whole #>> '{}';
        IF octet_length(string) > chars AND octet_length(string) > octet_length(left(string, chars)) THEN
            RETURN to_jsonb(left(string, chars - 1) || chr(8230));
        END IF;
    ELSIF kind = 'object' THEN
        RETURN coalesce(
            (SELECT jsonb_object_agg(
                        key,
                        CASE WHEN jsonb_typeof(item) = 'string' OR octet_length(item::text) > chars
                             THEN tasklight_cut_strings(item, chars) ELSE item END)
             FROM jsonb_each(whole) AS member(key, item)),
            '{}'::jsonb);
    ELSIF kind = 'array' THEN
        RETURN coalesce(
            (SELECT jsonb_agg(
                        CASE WHEN jsonb_typeof(item) = 'string' OR octet_length(item::text) > chars
                             THEN tasklight_cut_strings(item, chars) ELSE item END
                        ORDER BY position)
             FROM jsonb_array_elements(whole) WITH ORDINALITY AS element(item, position)),
            '[]'::jsonb);
    END IF;
    RETURN whole;
END
$function$
"""
DROP = "DROP FUNCTION IF EXISTS tasklight_cut_strings(jsonb, integer)"


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("workloads", "0008_worker_report_seconds"),
    ]

    operations = [
        migrations.RunPython(create, drop, elidable=False),
    ]
