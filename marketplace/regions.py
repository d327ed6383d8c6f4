"""Where compute lives: Shanghai districts and hubs, out-of-province hubs, and the metro areas latency is
measured to."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class Region(models.TextChoices):
    QINGPU = "qingpu", _("Qingpu (Yangtze River Delta hub starting area)")
    LINGANG = "lingang", _("Lingang")
    G60_SONGJIANG = "g60_songjiang", _("G60 corridor (Songjiang)")
    JINSHAN = "jinshan", _("Jinshan")
    BAOSHAN = "baoshan", _("Baoshan")
    JIADING = "jiading", _("Jiading")
    MINHANG = "minhang", _("Minhang")
    FENGXIAN = "fengxian", _("Fengxian")
    PUDONG_ZHOUPU = "pudong_zhoupu", _("Pudong Zhoupu")
    PUDONG_WAIGAOQIAO = "pudong_waigaoqiao", _("Pudong Waigaoqiao")
    SHANGHAI_EDGE = "shanghai_edge", _("Shanghai edge site")
    # Out-of-province national hub nodes (East Data West Computing).
    NINGXIA_ZHONGWEI = "ningxia_zhongwei", _("Ningxia hub (Zhongwei)")
    GANSU_QINGYANG = "gansu_qingyang", _("Gansu hub (Qingyang)")
    GUIZHOU_GUIAN = "guizhou_guian", _("Guizhou hub (Gui'an)")
    INNER_MONGOLIA_HOHHOT = "inner_mongolia_hohhot", _("Inner Mongolia hub (Hohhot)")
    CHENGDU_CHONGQING = "chengdu_chongqing", _("Chengdu-Chongqing hub")
    YANGTZE_DELTA_OTHER = "yangtze_delta_other", _("Yangtze River Delta (outside Shanghai)")


SHANGHAI_REGIONS = frozenset(
    {
        Region.QINGPU, Region.LINGANG, Region.G60_SONGJIANG, Region.JINSHAN, Region.BAOSHAN, Region.JIADING,
        Region.MINHANG, Region.FENGXIAN, Region.PUDONG_ZHOUPU, Region.PUDONG_WAIGAOQIAO, Region.SHANGHAI_EDGE,
    }
)


def is_shanghai(region: str) -> bool:
    return region in SHANGHAI_REGIONS


class Metro(models.TextChoices):
    SHANGHAI = "shanghai", _("Shanghai")
    HANGZHOU = "hangzhou", _("Hangzhou")
    NANJING = "nanjing", _("Nanjing")
    BEIJING = "beijing", _("Beijing")
    SHENZHEN = "shenzhen", _("Shenzhen")
