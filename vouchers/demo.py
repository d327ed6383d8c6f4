"""Demo voucher programmes modelled on published city rules (shared DOMAIN notes), with applications in each
state and related-party declarations. Idempotent: a second run adds nothing. Vouchers commit on the demo
buyers' contracts through the periodic task (or `redemptions_commit_new` in this step)."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from common.demo import SeedContext, step
from marketplace.demo import BUYERS, SUPPLIERS
from marketplace.models import Organisation, User
from vouchers import services
from vouchers.models import Application, ApplicationStatus, OrganisationProfile, Programme

CNY = 100
# code, name, name_zh, budget CNY, rules
PROGRAMMES = [
    ("bj-style-20", "SME compute voucher (20%, Beijing rules)", "中小企业算力券（20%，参照北京）", 50_000_000, {
        "rate_bps": 2000, "org_cap_per_year_fen": 2_000_000 * CNY, "eligible_size_classes": ["micro", "small", "medium"],
        "research_institutions_eligible": True, "voucher_valid_days": 365,
    }),
    ("hz-style-domestic", "Domestic chip voucher (30% domestic, 20% other; Hangzhou rules)", "国产算力券（国产30%，其他20%，参照杭州）", 250_000_000, {
        "rate_bps": 2000, "domestic_rate_bps": 3000, "org_cap_per_year_fen": 8_000_000 * CNY, "eligible_size_classes": ["micro", "small", "medium"],
        "eligible_chip_classes": ["training", "inference"], "voucher_valid_days": 365,
    }),
    ("sz-style-startup", "Startup compute voucher (50% for firms under 3 years; Shenzhen rules)", "初创企业算力券（成立3年内50%，参照深圳）", 500_000_000, {
        "rate_bps": 2000, "startup_rate_bps": 5000, "startup_max_age_years": 3, "org_cap_per_year_fen": 10_000_000 * CNY,
        "contract_cap_fen": 1_000_000 * CNY, "eligible_size_classes": ["micro", "small"], "eligible_regions": ["Shanghai"],
        "min_renewable_share": 10, "voucher_valid_days": 180,
    }),
]
# buyer username, programme code, requested CNY, decision: ("approve", CNY or None) | ("reject", reason) | None (pending)
APPLICATIONS = [
    ("buyer1", "bj-style-20", 2_000_000, ("approve", None)),
    ("buyer5", "bj-style-20", 1_500_000, ("approve", 1_000_000)),
    ("buyer2", "hz-style-domestic", 8_000_000, ("approve", 3_000_000)),
    ("buyer3", "sz-style-startup", 5_000_000, ("approve", None)),
    ("buyer6", "hz-style-domestic", 2_000_000, None),
    ("buyer4", "bj-style-20", 2_000_000, ("reject", "Fintech data services are outside the programme's industry scope this year.")),
]
# Declarations: buyer5 and supplier3 belong to the same group, so their trades get no subsidy.
PROFILES = {
    "buyer1": {"industry": "large models", "officers": ["310112198507150021"]},
    "buyer2": {"industry": "biotech"},
    "buyer3": {"industry": "robotics"},
    "buyer4": {"industry": "fintech"},
    "buyer5": {"industry": "industrial AI", "group_name": "Songjiang Industrial Holdings", "beneficial_owners": ["ZHOU MING"]},
    "buyer6": {"industry": "autonomous driving"},
    "supplier3": {"group_name": "Songjiang Industrial Holdings"},
}


def _org(username: str) -> Organisation:
    code = {row[0]: row[3] for row in (*BUYERS, *SUPPLIERS)}[username]
    return Organisation.objects.get(credit_code=code)


@step(order=30)
def seed_vouchers(ctx: SeedContext) -> None:
    authority = User.objects.get(username="authority")
    now = timezone.now()
    start = now.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    programmes = {}
    for code, name, name_zh, budget, rules in PROGRAMMES:
        p = Programme.objects.filter(code=code).first()
        if p is None:
            p = services.programme_create(user=authority, code=code, name=name, valid_from=start,
                                          valid_until=start.replace(year=start.year + 1) + dt.timedelta(days=365), **rules)
            Programme.objects.filter(pk=p.pk).update(name_zh=name_zh)
            ctx.created += 1
        services.programme_fund(user=authority, programme=p, amount_fen=budget * CNY, idempotency_key="demo-budget")
        programmes[code] = p
    for username, fields in PROFILES.items():
        org = _org(username)
        if not OrganisationProfile.objects.filter(pk=org.pk).exists():
            admin = User.objects.get(username=username)
            services.profile_declare(user=admin, organisation=org, **fields)
            ctx.created += 1
    for username, code, requested, decision in APPLICATIONS:
        org, admin = _org(username), User.objects.get(username=username)
        app, created = services.application_submit(
            user=admin, programme=programmes[code], organisation=org, credit_code=org.credit_code, declared_size_class=org.size_class,
            requested_fen=requested * CNY, idempotency_key=f"demo-{code}", industry=PROFILES[username]["industry"], now=now,
        )
        ctx.created += created
        if decision is None or app.status != ApplicationStatus.PENDING:
            continue
        if decision[0] == "approve":
            services.application_approve(user=authority, application_id=app.pk, amount_fen=decision[1] and decision[1] * CNY)
        else:
            services.application_reject(user=authority, application_id=app.pk, reason=decision[1])
    picked = services.redemptions_commit_new()
    ctx.notes.append(
        f"vouchers: {len(programmes)} programmes, {Application.objects.filter(status='approved').count()} vouchers issued; "
        f"{picked['committed']} contract shares committed, {picked['blocked']} blocked"
    )
