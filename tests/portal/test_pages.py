"""Every portal page for every role: renders without a server error, or refuses (403 / redirect to
sign-in); nobody sees another organisation's data."""

import csv
import io
import re

from django.test import Client

from exchange.models import Contract, Trade
from ledger.models import Payout, TopUp

PUBLIC = ["/", "/products/", "/products/?chip_class=training&min_security=3&min_green=0&max_latency=50&region=qingpu",
          "/inventory/", "/inventory/?group_by=supplier", "/accounts/login/"]
MEMBER = ["/orders/", "/wallet/", "/wallet/statement.csv", "/vouchers/"]
SUPPLIER = ["/supplier/"]
REGULATOR = ["/regulator/", "/regulator/?instrument=AI&organisation=Moyuan", "/regulator/metrics/", "/vouchers/review/"]

# role -> expected status for member / supplier / regulator pages
EXPECT = {
    None: (302, 302, 302),
    "buyer_user": (200, 403, 403),
    "viewer": (200, 403, 403),
    "seller_user": (200, 200, 403),
    "regulator": (403, 403, 200),
    "multi": (200, 403, 403),
}


def client_for(world, role) -> Client:
    client = Client()
    if role:
        client.force_login(world[role])
    return client


def test_every_page_renders_or_refuses_for_each_role(traded):
    for role in EXPECT:
        _crawl(traded, role)


def _crawl(traded, role):
    client = client_for(traded, role)
    inst = traded["instrument"].pk
    for url in [*PUBLIC, f"/instruments/{inst}/"]:
        response = client.get(url)
        if url == "/accounts/login/" and role:
            assert response.status_code == 302, url  # signed in already
        else:
            assert response.status_code == 200, (url, response.status_code)
    member, supplier, regulator = EXPECT[role]
    for urls, expected in ((MEMBER, member), (SUPPLIER, supplier), (REGULATOR, regulator)):
        for url in urls:
            response = client.get(url)
            assert response.status_code == expected, (role, url, response.status_code)
            if expected == 302:
                assert response["Location"].startswith("/accounts/login/?next=")
    assert client.get(f"/instruments/{inst + 1000}/").status_code == 404


def test_pages_show_the_trade_to_its_parties_and_the_regulator_only(traded):
    trade = Trade.objects.get()
    contract = Contract.objects.get()
    buyer = client_for(traded, "buyer_user").get("/orders/").content.decode()
    assert f"<td>{contract.pk}</td>" in buyer and "Qingpu Compute" in buyer  # the counterparty on the contract
    other = client_for(traded, "other_user").get("/orders/").content.decode()
    assert "No fills yet." in other and "No contracts yet." in other and "Qingpu Compute" not in other
    tape = client_for(traded, "regulator").get("/regulator/").content.decode()
    assert f'data-trade="{trade.pk}"' in tape and "Moyuan AI" in tape and "Qingpu Compute" in tape
    filtered = client_for(traded, "regulator").get("/regulator/?organisation=Lanting").content.decode()
    assert f'data-trade="{trade.pk}"' not in filtered
    supplier = client_for(traded, "seller_user").get("/supplier/").content.decode()
    assert "Qingpu Xicen" in supplier and "Moyuan AI" in supplier


def test_organisation_switcher_only_switches_to_own_organisations(traded):
    client = client_for(traded, "multi")
    page = client.get("/wallet/").content.decode()
    assert "Lanting Labs" in page and 'id="org-switch"' in page  # the first by name
    client.post("/organisation/", {"organisation": traded["buyer"].pk})
    assert "Moyuan AI" in client.get("/orders/").content.decode() and "Qingpu Compute" in client.get("/orders/").content.decode()
    response = client.post("/organisation/", {"organisation": traded["other_buyer"].pk, "next": "/wallet/"})
    assert response.status_code == 302 and response["Location"] == "/wallet/"
    assert "Lanting Labs" in client.get("/wallet/").content.decode()
    # Not a member of the supplier: refused, and the page still acts for Lanting Labs.
    client.post("/organisation/", {"organisation": traded["supplier"].pk, "next": "https://evil.example/"})
    page = client.get("/wallet/").content.decode()
    assert "Lanting Labs" in page and "Qingpu Compute" not in page
    assert client.get("/supplier/").status_code == 403


def test_statement_csv_has_only_the_organisations_postings(traded):
    response = client_for(traded, "buyer_user").get("/wallet/statement.csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["posting", "time", "account"]
    kinds = {r[3] for r in rows[1:]}
    assert "top_up" in kinds and len(rows) > 2
    assert rows[1][6] == "10000.00"  # the first posting: the 10,000 CNY top-up
    other = client_for(traded, "other_user").get("/wallet/statement.csv")
    other_rows = list(csv.reader(io.StringIO(b"".join(other.streaming_content).decode())))
    assert len(other_rows) == 2  # header and its own top-up; none of the trade's postings


def test_wallet_top_up_payout_and_alert(world):
    client = client_for(world, "buyer_user")
    response = client.post("/wallet/", {"action": "top_up", "amount": "250.50", "idempotency_key": "k1"})
    assert response.status_code == 302
    top_up = TopUp.objects.get(organisation=world["buyer"])
    assert (top_up.amount_fen, top_up.status, top_up.provider) == (25050, "pending", "offline")
    bad = client.post("/wallet/", {"action": "top_up", "amount": "-3", "idempotency_key": "k2"})
    assert bad.status_code == 400 and "Enter a positive amount" in bad.content.decode()
    # Payouts are for administrators: the trader is refused, nothing is held.
    assert client.post("/wallet/", {"action": "payout", "amount": "10", "destination": "bank 1"}).status_code == 403
    admin = client_for(world, "multi")  # admin of the buyer, trader at Lanting Labs (acted for first: by name)
    admin.post("/organisation/", {"organisation": world["buyer"].pk})
    too_much = admin.post("/wallet/", {"action": "payout", "amount": "20000.00", "destination": "ICBC 6222", "idempotency_key": "p1"})
    assert too_much.status_code == 400 and 'id="po-err"' in too_much.content.decode()
    assert not Payout.objects.exists()
    ok = admin.post("/wallet/", {"action": "payout", "amount": "100.00", "destination": "ICBC 6222", "idempotency_key": "p2"})
    assert ok.status_code == 302 and Payout.objects.get().amount_fen == 10000
    # Low-balance alert: above the balance, so the warning shows.
    client.post("/wallet/", {"action": "alert", "threshold": "20000"})
    assert 'data-testid="low-balance"' in client.get("/wallet/").content.decode()
    client.post("/wallet/", {"action": "alert", "threshold": ""})
    assert 'data-testid="low-balance"' not in client.get("/wallet/").content.decode()
    # A viewer may not move money.
    assert client_for(world, "viewer").post("/wallet/", {"action": "top_up", "amount": "1"}).status_code == 403


def test_instrument_page_carries_the_trading_rules_for_the_ticket(world):
    inst = world["instrument"]
    page = client_for(world, "buyer_user").get(f"/instruments/{inst.pk}/").content.decode()
    assert '"band_low": "13.50"' in page and '"band_high": "16.50"' in page and '"tick": "0.01"' in page
    assert '"available_fen": 1000000' in page and 'id="ticket"' in page
    seller = client_for(world, "seller_user").get(f"/instruments/{inst.pk}/").content.decode()
    assert f'<option value="{world["listing"].pk}">' in seller
    viewer = client_for(world, "viewer").get(f"/instruments/{inst.pk}/").content.decode()
    assert 'id="ticket"' not in viewer and "may not trade" in viewer
    anonymous = Client().get(f"/instruments/{inst.pk}/").content.decode()
    assert 'id="ticket"' not in anonymous and "Sign in to trade" in anonymous


def test_catalogue_filters(world):
    from tests.factories import ProductFactory

    ProductFactory(code="GEN", name="General compute", chip_class="", unit="FP32_PFH", min_security_level=1)
    client = Client()
    both = client.get("/products/").content.decode()
    assert "AI-TRAIN" in both and "GEN" in both
    training = client.get("/products/?chip_class=training").content.decode()
    assert "AI-TRAIN" in training and ">GEN<" not in training
    secure = client.get("/products/?min_security=3").content.decode()
    assert "AI-TRAIN" in secure and ">GEN<" not in secure
    region = client.get("/products/?region=qingpu").content.decode()  # the listing's data centre is in Qingpu
    assert "AI-TRAIN" in region and ">GEN<" not in region
    assert "No product matches" in client.get("/products/?region=lingang").content.decode()
    # A filter that is not a number is ignored, never a 500 ("NaN" and "Infinity" parse as decimals).
    for odd in ("NaN", "sNaN", "Infinity", "-Infinity", "²", "abc"):
        for name in ("max_latency", "min_green", "min_security"):
            page = client.get("/products/", {name: odd})
            assert page.status_code == 200 and "AI-TRAIN" in page.content.decode(), (name, odd)
    # Numbers, just huge ones (1e999999 overflowed PostgreSQL's numeric: a 500): they still filter.
    assert "No product matches" in client.get("/products/", {"min_green": "1e999999"}).content.decode()
    assert client.get("/products/", {"max_latency": "1e999999"}).status_code == 200
    assert "AI-TRAIN" in client.get("/products/", {"min_green": "-1e999999"}).content.decode()


def test_pages_in_chinese(world):
    client = Client(HTTP_ACCEPT_LANGUAGE="zh-hans")
    page = client.get("/").content.decode()
    assert 'lang="zh-hans"' in page and "市场概览" in page
    client.post("/i18n/setlang/", {"language": "en", "next": "/"})
    assert "Market overview" in client.get("/").content.decode()
    zh = Client()
    zh.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert "智能算力·训练" in zh.get("/products/").content.decode()  # the product's Chinese name


def test_wallet_top_up_goes_to_stripe_checkout_when_stripe_is_configured(world):
    from tests.ledger.payments_helpers import fake_stripe

    with fake_stripe() as stripe:
        response = client_for(world, "buyer_user").post("/wallet/", {"action": "top_up", "amount": "300.00", "idempotency_key": "s1"})
    assert response.status_code == 302 and response["Location"] == "https://checkout.stripe.com/c/pay/cs_test_1"
    top_up = TopUp.objects.get()
    assert (top_up.provider, top_up.amount_fen, top_up.status) == ("stripe", 30000, "pending")
    assert [r.path for r in stripe.requests] == ["/v1/checkout/sessions"]


def test_policy_metrics_against_targets(world):
    page = client_for(world, "regulator").get("/regulator/metrics/").content.decode()
    page = page[page.index('data-testid="metrics"'):]
    page = page[:page.index("</table>")]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr><td>(\w+)</td>.*?</tr>", page, flags=re.S)}
    assert "✗" in rows["connected_data_centres"] and 'aria-label="25%"' in rows["connected_data_centres"]  # 1 of 4
    assert "✓" in rows["renewable_share_pct"] and 'aria-label="150%"' in rows["renewable_share_pct"]  # 40% against >10%: capped
    assert '<td class="num">0</td>' in rows["data_centres_above_pue_1_25"] and 'aria-label="100%"' in rows["data_centres_above_pue_1_25"]


def test_a_regulator_who_is_also_a_member_never_acts_for_the_organisation(traded):
    from marketplace.models import Membership

    regulator = traded["regulator"]
    Membership.objects.create(user=regulator, organisation=traded["buyer"], role="admin")
    client = client_for(traded, "regulator")
    assert client.post("/wallet/", {"action": "top_up", "amount": "100.00", "idempotency_key": "r1"}).status_code == 403
    assert client.post("/vouchers/", {"programme": "1", "requested": "1"}).status_code == 403
    assert client.get("/orders/").status_code == 403
    assert not TopUp.objects.exists()
    page = client.get(f"/instruments/{traded['instrument'].pk}/").content.decode()
    assert 'id="ticket"' not in page and 'href="/wallet/"' not in page
    assert client.get("/regulator/").status_code == 200
