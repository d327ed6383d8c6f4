"""Demo market data modelled on Shanghai's compute landscape (see shared DOMAIN notes for sources)."""

import datetime as dt
from decimal import Decimal as D

from django.utils import timezone

from common.demo import DEFAULT_PASSWORD, SeedContext, step
from marketplace import services
from marketplace.models import (
    DataCentre,
    DeviceModel,
    Instrument,
    Listing,
    MemberRole,
    Membership,
    Organisation,
    PlatformRole,
    Product,
    User,
)
from marketplace.regions import Metro, Region
from marketplace.validators import make_credit_code

# vendor, name, chip class, domestic, FP16, FP32, FP64 dense TFLOPS, memory GB, power W
DEVICE_MODELS = [
    ("NVIDIA", "H100 SXM", "training", False, D("989"), D("67"), D("34"), 80, 700),
    ("NVIDIA", "H800 SXM", "training", False, D("989"), D("67"), D("1"), 80, 700),
    ("NVIDIA", "H20", "inference", False, D("148"), D("44"), D("1"), 96, 400),
    ("NVIDIA", "A100 SXM", "training", False, D("312"), D("19.5"), D("9.7"), 80, 400),
    ("NVIDIA", "A800 SXM", "training", False, D("312"), D("19.5"), D("9.7"), 80, 400),
    ("NVIDIA", "L40S", "inference", False, D("362"), D("91.6"), D("1.4"), 48, 350),
    ("Huawei", "Ascend 910B", "training", True, D("320"), None, None, 64, 400),
    ("Cambricon", "MLU370-X8", "inference", True, D("96"), D("24"), None, 48, 250),
    ("Kunlunxin", "R200", "inference", True, D("128"), D("32"), None, 32, 150),
]


def _code(division: str, body: str) -> str:
    return make_credit_code("91" + division, body)


# username, name, name_zh, credit code, size, founded, registration region
SUPPLIERS = [
    ("supplier1", "Qingpu Delta Intelligent Computing Co., Ltd.", "上海青浦长三角智算科技有限公司", _code("310118", "MA1GQP01"), "large", "2019-03-18", "Shanghai Qingpu"),
    ("supplier2", "Lingang Compute Port Co., Ltd.", "上海临港算力港科技有限公司", _code("310115", "MA1HLG02"), "large", "2020-07-01", "Shanghai Pudong (Lingang)"),
    ("supplier3", "G60 Songjiang Intelligent Computing Co., Ltd.", "上海G60松江智能算力有限公司", _code("310117", "MA1JGJ03"), "medium", "2021-05-12", "Shanghai Songjiang"),
    ("supplier4", "Jinshan Edge Cloud Co., Ltd.", "上海金山边缘云计算有限公司", _code("310116", "MA1KJH04"), "medium", "2018-11-09", "Shanghai Jinshan"),
    ("supplier5", "Zhongwei West Cloud Data Co., Ltd.", "中卫西部云数据有限公司", _code("640500", "MA76XW05"), "large", "2016-04-22", "Ningxia Zhongwei"),
    ("supplier6", "Gui'an Karst Hyperscale Co., Ltd.", "贵安喀斯特超算有限公司", _code("520100", "MA6GA006"), "large", "2017-09-30", "Guizhou Gui'an"),
]

BUYERS = [
    ("buyer1", "Moyuan Intelligent Technology Co., Ltd.", "上海墨源智能科技有限公司", _code("310112", "MA1MY101"), "small", "2021-06-15", "Shanghai Minhang"),
    ("buyer2", "Lingxi Protein Biotech Co., Ltd.", "上海灵犀蛋白生物科技有限公司", _code("310104", "MA1LX202"), "medium", "2016-02-29", "Shanghai Xuhui"),
    ("buyer3", "Zhiyu Robotics Co., Ltd.", "上海智宇机器人有限公司", _code("310110", "MA1XY303"), "micro", "2023-08-08", "Shanghai Yangpu"),
    ("buyer4", "Hengxin Fintech Data Co., Ltd.", "上海恒信金融数据科技有限公司", _code("310115", "MA1HX404"), "medium", "2014-10-10", "Shanghai Pudong"),
    ("buyer5", "Tiangong Industrial AI Co., Ltd.", "上海天工工业智能有限公司", _code("310117", "MA1TG505"), "small", "2019-12-01", "Shanghai Songjiang"),
    ("buyer6", "Jiading Autodrive Simulation Co., Ltd.", "上海嘉定自动驾驶仿真有限公司", _code("310114", "MA1JD606"), "small", "2020-05-20", "Shanghai Jiading"),
]

_SH = Metro.SHANGHAI
# supplier username -> data centres: (name, region, PUE, renewable %, gCO2/kWh, security level, Gbit/s,
#   {metro: rtt ms}, {device model name: count})
DATA_CENTRES = {
    "supplier1": [
        ("Qingpu Xicen AI Computing Centre", Region.QINGPU, D("1.22"), D("32"), D("570"), 3, 800,
         {_SH: D("1.8"), Metro.HANGZHOU: D("3.1"), Metro.NANJING: D("4.6"), Metro.BEIJING: D("24")},
         {"H100 SXM": 2048, "H800 SXM": 1024}),
    ],
    "supplier2": [
        ("Lingang Dishui Lake Computing Centre", Region.LINGANG, D("1.25"), D("28"), D("570"), 3, 400,
         {_SH: D("2.4"), Metro.HANGZHOU: D("4.0"), Metro.BEIJING: D("26")},
         {"A800 SXM": 1536, "Ascend 910B": 2048, "L40S": 512}),
    ],
    "supplier3": [
        ("Songjiang G60 Intelligent Computing Centre", Region.G60_SONGJIANG, D("1.28"), D("18"), D("570"), 3, 400,
         {_SH: D("1.5"), Metro.HANGZHOU: D("2.6")},
         {"Ascend 910B": 4096, "MLU370-X8": 1024}),
    ],
    "supplier4": [
        ("Jinshan Riverside Data Centre", Region.JINSHAN, D("1.35"), D("12"), D("570"), 2, 200,
         {_SH: D("2.9"), Metro.HANGZHOU: D("2.2")},
         {"H20": 2048, "L40S": 1024, "R200": 512}),
        ("Minhang Edge Site", Region.SHANGHAI_EDGE, D("1.40"), D("10"), D("570"), 3, 100,
         {_SH: D("0.8")},
         {"L40S": 256, "H20": 256}),
    ],
    "supplier5": [
        ("Zhongwei Shapotou Green Data Centre", Region.NINGXIA_ZHONGWEI, D("1.15"), D("65"), D("560"), 3, 400,
         {_SH: D("38"), Metro.BEIJING: D("22"), Metro.HANGZHOU: D("40")},
         {"A100 SXM": 2048, "Ascend 910B": 1024, "H20": 1024}),
    ],
    "supplier6": [
        ("Gui'an Karst Mountain Data Centre", Region.GUIZHOU_GUIAN, D("1.18"), D("55"), D("450"), 4, 400,
         {_SH: D("32"), Metro.SHENZHEN: D("18")},
         {"A800 SXM": 1024, "H100 SXM": 512, "R200": 1024, "MLU370-X8": 512}),
    ],
}

# Products: prices are CNY per standard unit. H100 rents for about 10-19 CNY per GPU-hour (0.989 FP16
# PFLOPS-hours), so training capacity sits near 15 CNY per FP16 PFLOPS-hour.
PRODUCTS = [
    dict(code="AI-TRAIN", name="AI training, FP16", name_zh="智能算力·训练 (FP16)", unit="FP16_PFH",
         chip_class="training", min_security_level=3, reference_price=D("15.00"), window="day",
         lot_size=D("1"), tick_size=D("0.01"), gate_closure_minutes=60),
    dict(code="AI-TRAIN-SH", name="AI training in Shanghai (<=5 ms)", name_zh="智能算力·训练·上海低时延", unit="FP16_PFH",
         chip_class="training", max_latency_ms=D("5"), latency_metro="shanghai", min_security_level=3,
         reference_price=D("17.50"), window="day", lot_size=D("1"), tick_size=D("0.01"), gate_closure_minutes=60),
    dict(code="AI-TRAIN-GREEN", name="Green AI training (>=50% renewable, PUE<=1.20)", name_zh="绿色智能算力·训练",
         unit="FP16_PFH", chip_class="training", min_renewable_share=D("50"), max_pue=D("1.20"), min_security_level=3,
         reference_price=D("14.00"), window="day", lot_size=D("1"), tick_size=D("0.01"), gate_closure_minutes=120),
    dict(code="AI-DOMESTIC", name="Domestic-chip AI compute, FP16", name_zh="国产芯片智能算力 (FP16)", unit="FP16_PFH",
         domestic_only=True, reference_price=D("12.00"), window="day", lot_size=D("1"), tick_size=D("0.01"),
         gate_closure_minutes=60),
    dict(code="AI-INFER-EDGE", name="Low-latency inference in Shanghai (<=3 ms), hourly", name_zh="智能算力·推理·上海边缘(小时)",
         unit="FP16_PFH", chip_class="inference", max_latency_ms=D("3"), latency_metro="shanghai",
         reference_price=D("24.00"), window="hour", lot_size=D("0.1"), tick_size=D("0.10"), gate_closure_minutes=15,
         min_security_level=2),
    dict(code="GEN-FP32", name="General compute, FP32", name_zh="通用算力 (FP32)", unit="FP32_PFH",
         reference_price=D("80.00"), window="day", lot_size=D("0.1"), tick_size=D("0.10"), gate_closure_minutes=60),
    dict(code="HPC-FP64", name="High-performance computing, FP64", name_zh="超算 (FP64)", unit="FP64_PFH",
         min_security_level=3, reference_price=D("420.00"), window="day", lot_size=D("0.1"), tick_size=D("0.10"),
         gate_closure_minutes=120),
]

# (supplier, data centre, product, device model, devices offered)
LISTINGS = [
    ("supplier1", "Qingpu Xicen AI Computing Centre", "AI-TRAIN-SH", "H100 SXM", 1024),
    ("supplier1", "Qingpu Xicen AI Computing Centre", "AI-TRAIN", "H800 SXM", 512),
    ("supplier1", "Qingpu Xicen AI Computing Centre", "HPC-FP64", "H100 SXM", 256),
    ("supplier2", "Lingang Dishui Lake Computing Centre", "AI-TRAIN", "A800 SXM", 1024),
    ("supplier2", "Lingang Dishui Lake Computing Centre", "AI-DOMESTIC", "Ascend 910B", 1536),
    ("supplier2", "Lingang Dishui Lake Computing Centre", "AI-INFER-EDGE", "L40S", 256),
    ("supplier3", "Songjiang G60 Intelligent Computing Centre", "AI-TRAIN-SH", "Ascend 910B", 2048),
    ("supplier3", "Songjiang G60 Intelligent Computing Centre", "AI-DOMESTIC", "MLU370-X8", 768),
    ("supplier4", "Jinshan Riverside Data Centre", "AI-INFER-EDGE", "H20", 1024),
    ("supplier4", "Jinshan Riverside Data Centre", "GEN-FP32", "L40S", 768),
    ("supplier4", "Minhang Edge Site", "AI-INFER-EDGE", "L40S", 192),
    ("supplier5", "Zhongwei Shapotou Green Data Centre", "AI-TRAIN-GREEN", "A100 SXM", 1536),
    ("supplier5", "Zhongwei Shapotou Green Data Centre", "AI-DOMESTIC", "Ascend 910B", 768),
    ("supplier6", "Gui'an Karst Mountain Data Centre", "AI-TRAIN-GREEN", "H100 SXM", 384),
    ("supplier6", "Gui'an Karst Mountain Data Centre", "HPC-FP64", "A800 SXM", 512),
    ("supplier6", "Gui'an Karst Mountain Data Centre", "AI-DOMESTIC", "R200", 768),
]

LISTING_DAYS = 14


# --- The seeding step ------------------------------------------------------------------------------------

def _user(ctx: SeedContext, username: str, **extra) -> User:
    user, created = User.objects.get_or_create(username=username, defaults=extra)
    if created or ctx.password:
        user.set_password(ctx.password or DEFAULT_PASSWORD)
        user.save(update_fields=["password"])
    ctx.created += created
    return user


def _org(ctx: SeedContext, row: tuple, kind: str) -> Organisation:
    username, name, name_zh, code, size, founded, region = row
    user = _user(ctx, username, email=f"{username}@demo.suanli.example")
    org = Organisation.objects.filter(credit_code=code).first()
    if org is None:
        org = Organisation(name=name, name_zh=name_zh, credit_code=code, kind=kind, size_class=size,
                           founded_on=dt.date.fromisoformat(founded), registration_region=region)
        org.full_clean()
        org.save()
        ctx.created += 1
    Membership.objects.get_or_create(user=user, organisation=org, defaults={"role": MemberRole.ADMIN})
    return org


@step(order=10)
def seed_catalogue(ctx: SeedContext) -> None:
    """Platform users, device models, products, suppliers with data centres and listings, SME buyers,
    and instruments for the coming week."""
    for role in (PlatformRole.OPERATOR, PlatformRole.REGULATOR, PlatformRole.AUTHORITY):
        extra = {"platform_role": role, "email": f"{role}@demo.suanli.example"}
        if role == PlatformRole.OPERATOR:
            extra |= {"is_staff": True, "is_superuser": True}
        _user(ctx, str(role), **extra)

    models = {}
    for vendor, name, chip, domestic, fp16, fp32, fp64, mem, power in DEVICE_MODELS:
        model, created = DeviceModel.objects.get_or_create(
            vendor=vendor, name=name,
            defaults=dict(chip_class=chip, is_domestic=domestic, fp16_tflops=fp16, fp32_tflops=fp32, fp64_tflops=fp64, memory_gb=mem, power_w=power),
        )
        models[name] = model
        ctx.created += created

    products = {}
    for spec in PRODUCTS:
        spec = dict(spec)
        product = Product.objects.filter(code=spec["code"]).first()
        if product is None:
            product = Product(**spec)
            product.full_clean()
            product.save()
            ctx.created += 1
        products[product.code] = product

    centres = {}
    for row in SUPPLIERS:
        org = _org(ctx, row, "supplier")
        for name, region, pue, green, carbon, level, gbps, latencies, devices in DATA_CENTRES[row[0]]:
            dc = DataCentre.objects.filter(owner=org, name=name).first()
            if dc is None:
                dc = services.data_centre_save(
                    fields=dict(owner=org, name=name, region=region, pue=pue, renewable_share=green, carbon_intensity=carbon, security_level=level, interconnect_gbps=gbps),
                    latencies=[{"metro": m, "rtt_ms": ms} for m, ms in latencies.items()],
                    devices=[services.DeviceLine(device_model=models[m], count=n) for m, n in devices.items()],
                )
                ctx.created += 1
            centres[name] = dc
    for row in BUYERS:
        _org(ctx, row, "buyer")

    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    for _, dc_name, product_code, model_name, count in LISTINGS:
        dc, product, model = centres[dc_name], products[product_code], models[model_name]
        if Listing.objects.filter(data_centre=dc, product=product, device_model=model, is_active=True).exists():
            continue
        services.listing_create(
            data_centre=dc, product=product, device_model=model, device_count=count,
            available_from=start, available_until=start + dt.timedelta(days=LISTING_DAYS),
        )
        ctx.created += 1
    roll = services.instruments_roll()
    ctx.created += roll["listed"]
    ctx.notes.append(f"Instruments: {Instrument.objects.filter(status='open').count()} open.")
