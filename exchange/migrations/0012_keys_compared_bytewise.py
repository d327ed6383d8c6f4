"""Key columns (client order ids, idempotency keys, references) compared byte by byte on PostgreSQL
(common.fields.KeyField): their indexes are written with every order, hold and entry."""

import common.fields
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('exchange', '0011_partial_indexes_for_sparse_keys'),
    ]

    operations = [
        migrations.AlterField(
            model_name='order',
            name='client_order_id',
            field=common.fields.KeyField(max_length=64),
        ),
    ]
