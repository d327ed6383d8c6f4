"""Keys NULL on many rows (an order's hold or listing, an event's trade or actor) indexed only where set: a NULL
is an index entry too, written with every row and every non-HOT update (bench/RESULTS.md, fifteenth session)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('exchange', '0010_foreign_keys_checked_per_statement'),
        ('ledger', '0003_foreign_keys_checked_per_statement'),
        ('marketplace', '0002_organisation_delivery_ratio'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='order',
            name='hold',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='orders', to='ledger.hold'),
        ),
        migrations.AlterField(
            model_name='order',
            name='listing',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='orders', to='marketplace.listing'),
        ),
        migrations.AlterField(
            model_name='orderevent',
            name='actor',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name='orderevent',
            name='trade',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='exchange.trade'),
        ),
        migrations.AddIndex(
            model_name='order',
            index=models.Index(condition=models.Q(('listing__isnull', False)), fields=['listing'], name='order_listing'),
        ),
        migrations.AddIndex(
            model_name='orderevent',
            index=models.Index(condition=models.Q(('trade__isnull', False)), fields=['trade'], name='orderevent_trade'),
        ),
        migrations.AddIndex(
            model_name='orderevent',
            index=models.Index(condition=models.Q(('actor__isnull', False)), fields=['actor'], name='orderevent_actor'),
        ),
        migrations.AddConstraint(
            model_name='order',
            constraint=models.UniqueConstraint(condition=models.Q(('hold__isnull', False)), fields=('hold',), name='order_hold_unique'),
        ),
    ]
