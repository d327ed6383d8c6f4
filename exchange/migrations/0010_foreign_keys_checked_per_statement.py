"""The matcher's foreign keys lose their per-row constraints; common.refchecks installs the statement triggers
that enforce them (after every migrate)."""

import importlib

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from common import refchecks


def forward(apps, schema_editor):
    """PostgreSQL: the statement triggers at once, in the transaction that drops the constraints (migrate
    installs them again afterwards, common.apps). SQLite gets them only after migrate (a later migration's table
    rebuild would fail on them), but rebuilds exchange_capacityhold for the changes above and its triggers go with
    the old table: the listing-usage triggers of 0007 are created again (the usage rows are untouched)."""
    if schema_editor.connection.vendor == "postgresql":
        refchecks.install(schema_editor.connection, registry=apps)
    else:
        usage = importlib.import_module("exchange.migrations.0007_listing_usage")
        for statement in usage.SQLITE_BACKWARD + usage.SQLITE_FORWARD[1:]:  # [0] refills the usage table
            schema_editor.execute(statement, params=None)


def backward(apps, schema_editor):
    refchecks.uninstall(schema_editor.connection)


class Migration(migrations.Migration):

    dependencies = [
        ('exchange', '0009_order_organisation_newest'),
        ('ledger', '0003_foreign_keys_checked_per_statement'),
        ('marketplace', '0002_organisation_delivery_ratio'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='capacityhold',
            name='instrument',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='marketplace.instrument'),
        ),
        migrations.AlterField(
            model_name='capacityhold',
            name='listing',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='capacity_holds', to='marketplace.listing'),
        ),
        migrations.AlterField(
            model_name='capacityhold',
            name='order',
            field=models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='capacity_hold', to='exchange.order'),
        ),
        migrations.AlterField(
            model_name='contract',
            name='buyer',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='bought_contracts', to='marketplace.organisation'),
        ),
        migrations.AlterField(
            model_name='contract',
            name='instrument',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='contracts', to='marketplace.instrument'),
        ),
        migrations.AlterField(
            model_name='contract',
            name='listing',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='contracts', to='marketplace.listing'),
        ),
        migrations.AlterField(
            model_name='contract',
            name='seller',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='sold_contracts', to='marketplace.organisation'),
        ),
        migrations.AlterField(
            model_name='contract',
            name='trade',
            field=models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='contract', to='exchange.trade'),
        ),
        migrations.AlterField(
            model_name='order',
            name='hold',
            field=models.OneToOneField(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='order', to='ledger.hold'),
        ),
        migrations.AlterField(
            model_name='order',
            name='instrument',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='orders', to='marketplace.instrument'),
        ),
        migrations.AlterField(
            model_name='order',
            name='listing',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='orders', to='marketplace.listing'),
        ),
        migrations.AlterField(
            model_name='order',
            name='organisation',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='orders', to='marketplace.organisation'),
        ),
        migrations.AlterField(
            model_name='order',
            name='user',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='orders', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name='orderevent',
            name='actor',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name='orderevent',
            name='order',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='exchange.order'),
        ),
        migrations.AlterField(
            model_name='orderevent',
            name='trade',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='exchange.trade'),
        ),
        migrations.AlterField(
            model_name='trade',
            name='buyer',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='buys', to='marketplace.organisation'),
        ),
        migrations.AlterField(
            model_name='trade',
            name='instrument',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='trades', to='marketplace.instrument'),
        ),
        migrations.AlterField(
            model_name='trade',
            name='maker_order',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='maker_trades', to='exchange.order'),
        ),
        migrations.AlterField(
            model_name='trade',
            name='seller',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='sells', to='marketplace.organisation'),
        ),
        migrations.AlterField(
            model_name='trade',
            name='taker_order',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='taker_trades', to='exchange.order'),
        ),
        migrations.RunPython(forward, backward),
    ]
