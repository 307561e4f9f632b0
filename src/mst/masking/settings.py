"""The ``mask`` config section: one spec of which tokens a method hides, shared by MST / DINO and the MIM methods
(MAE, SimMIM). Each method changes the defaults it needs (``Method.changed_defaults``: MAE masks ``patches`` at
0.75, DINO ``none``) and passes its own reference values in (AMT's ratios), so nothing here knows a method.

A strategy with a setting of its own declares it on its class (``settings = {"key": make_spec(...)}``), and it is a
``mask.*`` key like these (:class:`mst.masking.base.MaskStrategy`).

>>> from mst.config import load_config
>>> load_config(overrides=["method=mae"])["mask"]["strategy"], load_config()["mask"]["strategy"]
('patches', 'attention')
"""
from __future__ import annotations

from dataclasses import dataclass

from mst.settings import AT_LEAST_1, PROBABILITY, RATIO, Settings, setting


@dataclass(frozen=True)
class MaskSettings(Settings, section="mask"):
    """Which tokens a step hides (and, with a throwing strategy, throws), and where an attention comes from."""

    strategy: str = setting("attention", "a registered strategy: none | random | attention (MST) | attmask | "
                            "patches (MAE) | blocks (SimMIM) | amt (throws) | ...", old=("mst.mask", "mim.mask"))
    ratio: float = setting(0.45, "share of tokens (patches, attmask, amt) or mask units (blocks) masked",
                           range=RATIO, old=("mst.mask_ratio", "mim.mask_ratio"))
    num: int = setting(8, "attention: the lowest 1/num tokens are candidates", range=AT_LEAST_1,
                       old=("mst.mask_num", "mim.mask_num"))
    p: float = setting(0.1, "attention: probability of masking a candidate; random: any token",
                       range=PROBABILITY, old=("mst.mask_p", "mim.mask_p"))
    unit: int | None = setting(None, "blocks, amt: mask-unit side in pixels, a multiple of model.patch_size that "
                               "divides the image (null: the patch)", kind=int, range=AT_LEAST_1,
                               old=("mim.mask_patch_size",))
    throw_ratio: float = setting(0.40, "amt as mask.strategy (MST / DINO): share of the tokens thrown (MAE / SimMIM "
                                 "throw through amt.*)", range=RATIO, old=("mst.throw_ratio",))
    importance: str | None = setting("teacher", "the attention an importance-driven strategy reads: teacher "
                                     "(MST / DINO: the EMA teacher's CLS attention) | encoder (MIM: a no-grad "
                                     "pass) | maps (MIM: AMT's stored maps) | frozen (a frozen pretrained "
                                     "teacher's, teacher.init) | none; null (MIM): maps with "
                                     "amt.enabled, else none", kind=str, nullable=True,
                                     old=("mst.importance", "mim.importance"))
