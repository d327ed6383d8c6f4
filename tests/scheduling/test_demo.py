from django.core.management import call_command

from scheduling.demo import CLIENT_DEMAND_ID
from scheduling.models import Demand


def test_seed_demo_plans_a_demand_for_buyer1_once(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        call_command("seed_demo", stdout=open("/dev/null", "w"))
    demand = Demand.objects.get(client_demand_id=CLIENT_DEMAND_ID)
    assert demand.organisation.memberships.filter(user__username="buyer1").exists()
    assert demand.status == "planned", demand.plan.get("binding")
    assert demand.plan["totals"]["units"] == "10" and demand.plan["allocations"]
    assert not demand.children.exists()  # a quote only
    with django_capture_on_commit_callbacks(execute=True):
        call_command("seed_demo", stdout=open("/dev/null", "w"))
    assert Demand.objects.count() == 1
