"""Key columns (client order ids, idempotency keys, references) compared byte by byte on PostgreSQL
(common.fields.KeyField): their indexes are written with every order, hold and entry."""

import common.fields
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0004_partial_indexes_for_sparse_keys'),
    ]

    operations = [
        migrations.AlterField(
            model_name='hold',
            name='reference',
            field=common.fields.KeyField(help_text='What the hold is for, e.g. order:123', max_length=100),
        ),
        migrations.AlterField(
            model_name='journalentry',
            name='idempotency_key',
            field=common.fields.KeyField(max_length=200),
        ),
        migrations.AlterField(
            model_name='journalentry',
            name='reference',
            field=common.fields.KeyField(blank=True, help_text='e.g. order:123, trade:45', max_length=100),
        ),
        migrations.AlterField(
            model_name='payout',
            name='idempotency_key',
            field=common.fields.KeyField(max_length=200),
        ),
        migrations.AlterField(
            model_name='topup',
            name='idempotency_key',
            field=common.fields.KeyField(max_length=200),
        ),
    ]
