"""On PostgreSQL the database itself refuses UPDATE and DELETE on the audit chain, its checkpoints, alert
reviews and deletion attestations. Someone who can disable triggers can still edit them; verification
then names the record (tests/oversight/test_audit.py does exactly that)."""

from django.db import migrations

TABLES = ("oversight_auditrecord", "oversight_auditcheckpoint", "oversight_alertreview", "oversight_deletionattestation")

FORWARD = """
CREATE OR REPLACE FUNCTION oversight_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'oversight records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
""" + "".join(
    f"""
CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION oversight_refuse_change();
"""
    for table in TABLES
)

BACKWARD = "".join(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table};" for table in TABLES) + (
    "DROP FUNCTION IF EXISTS oversight_refuse_change();"
)


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("oversight", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
