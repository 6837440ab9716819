"""Procedural abdominal CT: body habitus, organs, vessels, bones, bowel, table; HU per structure from a continuous
time after contrast injection; CT-like correlated noise.

Body frame: LPS millimetres (x = patient left, y = posterior, z = superior), z = 0 at the top of the liver dome.
Sizes from standard adult anatomy: liver dome under the right hemidiaphragm, kidneys ~10-12 cm long with the
left one higher, upper poles tilted medially, lower poles near L3, aortic bifurcation at L4, iliac crest near L4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .fields import rotation

(AIR, FAT, MUSCLE, CORT, CANC, LUNG, BLOOD, MYO, LIVER, SPLEEN, KCOR, KMED, KCOL, KSINUS, AORTA, IVC, PORTAL,
 PANCREAS, BWALL, BFLUID, BAIR, STOOL, GALL, TABLE, CANAL, FOAM) = range(26)
NAMES = ["air", "fat", "muscle", "cortical_bone", "cancellous_bone", "lung", "heart_blood", "myocardium", "liver",
         "spleen", "renal_cortex", "renal_medulla", "collecting_system", "renal_sinus", "aorta", "ivc", "portal_vein",
         "pancreas", "bowel_wall", "bowel_fluid", "bowel_air", "stool", "gallbladder", "table", "spinal_canal",
         "foam"]

# Enhancement above baseline (HU at enhancement scale 1) at times after injection (s). Midpoints of the shared
# table (docs/hu-reference.md): late arterial ~35 s, portal venous ~70 s, delayed 3-5 min; bolus arrival ~15 s.
T_ANCHORS = np.array([0.0, 15.0, 35.0, 70.0, 240.0, 600.0])
ENH = {
    "aorta": [0, 0, 283, 133, 68, 45],
    "portal_vein": [0, 0, 88, 138, 73, 50],
    "ivc": [0, 0, 28, 98, 73, 50],
    "liver": [0, 0, 18, 58, 38, 25],
    "spleen": [0, 0, 70, 75, 55, 35],
    "renal_cortex": [0, 0, 140, 130, 90, 60],
    "renal_medulla": [0, 0, 40, 120, 95, 70],
    "pancreas": [0, 0, 70, 55, 35, 20],
    "muscle": [0, 0, 5, 10, 8, 5],
    "myocardium": [0, 0, 60, 45, 30, 20],
    "bowel_wall": [0, 0, 40, 50, 30, 20],
}
BASE = {"aorta": (35, 50), "portal_vein": (35, 50), "ivc": (35, 50), "liver": (50, 65), "spleen": (40, 50),
        "renal_cortex": (30, 40), "renal_medulla": (30, 40), "pancreas": (35, 50), "muscle": (40, 55),
        "myocardium": (40, 55), "bowel_wall": (30, 45)}
PHASE_TIMES = {"non_contrast": None, "arterial": (30.0, 42.0), "portal_venous": (62.0, 85.0),
               "delayed": (180.0, 300.0)}
# adequacy of the bolus: the structure and the HU below which the phase is "suboptimal"
SUBOPTIMAL = {"arterial": ("aorta", 250.0), "portal_venous": ("liver", 100.0), "delayed": ("aorta", 90.0)}


def expected_hu(name: str, t: float | None, scale: float = 1.0, base: float | None = None) -> float:
    """HU of a structure ``t`` s after injection (None = no contrast) at enhancement ``scale``."""
    b = float(np.mean(BASE[name])) if base is None else base
    return b if t is None else b + scale * float(np.interp(t, T_ANCHORS, ENH[name]))


def draw_contrast(rng: np.random.Generator, phase: str) -> dict[str, Any]:
    """Time after injection, enhancement scale (cardiac output / body size), excretion onset; HU per structure."""
    u = rng.uniform
    t = None if phase == "non_contrast" else round(float(u(*PHASE_TIMES[phase])), 1)
    scale = round(float(u(0.6, 1.35)), 3)
    t_ex = round(float(u(150.0, 320.0)), 1)
    hu: dict[str, float] = {}
    for name in ENH:
        base = float(u(*BASE[name]))
        jitter = float(u(0.9, 1.1))  # structure-level variation
        hu[name] = round(expected_hu(name, t, scale * jitter, base), 1)
    hu["blood"] = hu["aorta"] if t is None or t < 60 else round(0.5 * (hu["aorta"] + hu["ivc"]), 1)
    if t is not None and t > t_ex:
        hu["collecting_system"] = round(float(min(1500.0, 150.0 + scale * 8.0 * (t - t_ex))), 1)
    else:
        hu["collecting_system"] = round(float(u(0, 15)), 1)
    out = {"phase": phase, "t_after_injection_s": t, "enhancement_scale": scale, "excretion_onset_s": t_ex, "hu": hu}
    if phase in SUBOPTIMAL:
        s, thr = SUBOPTIMAL[phase]
        out["enhancement"] = "suboptimal" if hu[s] < thr else "optimal"
        out["enhancement_rule"] = f"{s} < {thr:g} HU"
    else:
        out["enhancement"] = ""
    return out


def draw_body(rng: np.random.Generator) -> dict[str, Any]:
    u = rng.uniform
    kl = float(u(95, 125))
    left_top = float(u(-100, -70))
    right_top = left_top - float(u(5, 25))
    return {
        "half_width_mm": round(float(u(135, 190)), 1), "half_ap_mm": round(float(u(95, 145)), 1),
        "subcut_fat_mm": round(float(u(6, 45)), 1), "muscle_wall_mm": round(float(u(7, 15)), 1),
        "arms_in": bool(rng.random() < 0.35), "kidney_length_mm": round(kl, 1),
        "kidney_top_left_mm": round(left_top, 1), "kidney_top_right_mm": round(right_top, 1),
        "kidney_tilt_deg": round(float(u(8, 20)), 1), "aorta_radius_mm": round(float(u(8.5, 13)), 1),
        "liver_scale": round(float(u(0.85, 1.15)), 3), "spleen_scale": round(float(u(0.75, 1.3)), 3),
        "dome_depth_mm": round(float(u(25, 45)), 1), "lobulation": [round(float(v), 3) for v in u(-1, 1, 6)],
        "bif_below_pole_mm": round(float(u(15, 50)), 1), "crest_below_pole_mm": round(float(u(5, 40)), 1),
        "bowel_phase": [round(float(v), 3) for v in u(0, 2 * np.pi, 3)], "stomach_fill": round(float(u(0.2, 0.9)), 2),
        "offset_mm": [round(float(v), 1) for v in rng.normal(0, 12, 2)],
    }


@dataclass
class KidneyGeom:
    centre: np.ndarray
    R: np.ndarray
    semi: np.ndarray

    def lowest_z(self) -> float:
        # lowest point of a rotated ellipsoid: centre_z - || (R^T e_z) * semi ||
        v = self.R.T @ np.array([0.0, 0.0, 1.0])
        return float(self.centre[2] - np.linalg.norm(v * self.semi))


class Body:
    """Analytic label function of a drawn body; ``labels(X, Y, Z)`` on broadcast coordinate arrays (mm)."""

    def __init__(self, p: dict[str, Any]):
        self.p = p
        A, B = p["half_width_mm"], p["half_ap_mm"]
        self.A, self.B = A, B
        self.Ai = A - p["subcut_fat_mm"] - p["muscle_wall_mm"]
        self.Bi = B - 0.8 * p["subcut_fat_mm"] - p["muscle_wall_mm"]
        self.yb = 0.85 * B - p["subcut_fat_mm"] * 0.5 - p["muscle_wall_mm"] - 38.0  # vertebral body centre
        half = p["kidney_length_mm"] / 2
        self.kidneys = []
        for side, top in ((-1, p["kidney_top_right_mm"]), (1, p["kidney_top_left_mm"])):
            tilt = p["kidney_tilt_deg"]
            R = rotation(8.0, -side * tilt, side * 25.0)  # upper pole medial, hilum facing anteromedially
            semi = np.array([27.0, 21.0, half])
            c = np.array([side * (self.yb * 0 + 62.0 + 0.12 * self.Ai), self.yb + 2.0, 0.0])
            kg = KidneyGeom(c, R, semi)
            # place the upper pole at `top`
            v = R.T @ np.array([0.0, 0.0, 1.0])
            kg.centre[2] = top - float(np.linalg.norm(v * semi))
            self.kidneys.append(kg)
        self.pole_low = min(k.lowest_z() for k in self.kidneys)
        self.z_bif = self.pole_low - p["bif_below_pole_mm"]
        self.z_crest = self.pole_low - p["crest_below_pole_mm"]
        ls = p["liver_scale"]
        self.liver_c = np.array([-0.42 * self.Ai, -5.0, -75.0 * ls])
        self.liver_r = np.array([0.58 * self.Ai * ls, 0.78 * self.Bi, 95.0 * ls])

    def dome(self, X, Y):
        """Right hemidiaphragm surface (liver top): peak z = 0 at the liver centre's x/y."""
        c = self.liver_c
        return -(((X - c[0]) / 95.0) ** 2 + ((Y - c[1]) / 95.0) ** 2) * self.p["dome_depth_mm"]

    def liver_top(self) -> float:
        return 0.0

    def labels(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        shape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
        lab = _Labels(np.zeros(shape, np.uint8))
        A, B, Ai, Bi, yb = self.A, self.B, self.Ai, self.Bi, self.yb
        theta = np.arctan2(Y, X)
        lob = p["lobulation"]
        # body outline: ellipse, flat back on the table, slightly wider over the pelvis
        widen = 1.0 + 0.06 * np.clip((self.z_crest - Z) / 80.0, 0, 1)
        body = ((X / (A * widen)) ** 2 + (Y / B) ** 2 < 1.0) & (Y < 0.85 * B)
        cav = ((X / (Ai * widen)) ** 2 + (Y / Bi) ** 2 < 1.0) & (Y < 0.85 * B - p["subcut_fat_mm"] * 0.5 - 12)
        wall_in = ((X / ((Ai + p["muscle_wall_mm"]) * widen)) ** 2 + (Y / (Bi + p["muscle_wall_mm"])) ** 2 < 1.0)
        lab[body] = FAT
        lab[body & wall_in] = MUSCLE
        lab[cav] = FAT  # intra-abdominal fat; organs are laid on top
        # table, foam mattress
        yt = 0.85 * B + 3.0
        lab[(Y > yt) & (Y < yt + 25) & (np.abs(X) < 230)] = FOAM
        lab[(Y > yt + 25) & (Y < yt + 31) & (np.abs(X) < 240)] = TABLE
        # arms at the sides
        if p["arms_in"]:
            for s in (-1, 1):
                ax_ = s * (A + 48.0)
                arm = ((X - ax_) / 42.0) ** 2 + ((Y - 5.0) / 46.0) ** 2 < 1.0
                lab[arm] = FAT
                lab[((X - ax_) / 34.0) ** 2 + ((Y - 5.0) / 38.0) ** 2 < 1.0] = MUSCLE
                lab[(X - ax_) ** 2 + (Y - 5.0) ** 2 < 12.0 ** 2] = CORT
                lab[(X - ax_) ** 2 + (Y - 5.0) ** 2 < 8.0 ** 2] = CANC
        # lungs and heart above the diaphragm (left dome ~15 mm lower than the right)
        dome_r = self.dome(X, Y)
        dome_l = -15.0 - ((X - 0.4 * Ai) / 95.0) ** 2 * 30.0 - ((Y + 5) / 95.0) ** 2 * 30.0
        dome = np.where(X < 0, dome_r, np.maximum(dome_r, dome_l))
        above = Z > dome + 2.0
        lab[cav & above] = LUNG
        heart = ((X - 25) / 62.0) ** 2 + ((Y + 0.35 * Bi) / 52.0) ** 2 + ((Z - 70.0) / 60.0) ** 2 < 1.0
        lab[cav & above & heart] = MYO
        lab[cav & above & ((((X - 25) / 50.0) ** 2 + ((Y + 0.35 * Bi) / 40.0) ** 2 + ((Z - 70.0) / 48.0) ** 2) < 1)] \
            = BLOOD
        # liver: lobulated ellipsoid + left lobe, under the dome
        c, r = self.liver_c, self.liver_r
        lobf = 1.0 + 0.05 * np.sin(3 * theta + lob[0] * 3 + Z / 40.0) + 0.04 * np.sin(5 * theta + lob[1] * 3)
        q = ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2
        ql = ((X - 10.0) / (0.45 * Ai)) ** 2 + ((Y + 0.45 * Bi) / (0.4 * Bi)) ** 2 + ((Z + 45.0) / 38.0) ** 2
        liver = ((q < lobf ** 2) | (ql < lobf ** 2)) & (Z <= dome_r) & cav & (Z > c[2] - r[2] * 0.9)
        lab[liver] = LIVER
        # gallbladder
        lab[(((X - (c[0] + 15)) / 15.0) ** 2 + ((Y + 0.55 * Bi) / 14.0) ** 2 + ((Z - (c[2] - 30)) / 32.0) ** 2 < 1)
            & cav] = GALL
        # spleen (left posterior, under the left dome)
        ss = p["spleen_scale"]
        sx, sy, sz = 0.62 * Ai, 0.3 * Bi, -65.0
        xr, yr = (X - sx) * np.cos(0.6) + (Y - sy) * np.sin(0.6), -(X - sx) * np.sin(0.6) + (Y - sy) * np.cos(0.6)
        spleen = ((xr / (22 * ss)) ** 2 + (yr / (48 * ss)) ** 2 + ((Z - sz) / (50 * ss)) ** 2 < 1) & (Z < dome_l) & cav
        lab[spleen] = SPLEEN
        # stomach with air-fluid level (air anterior: supine)
        st = (((X - 0.25 * Ai) / 45.0) ** 2 + ((Y + 0.35 * Bi) / 38.0) ** 2 + ((Z + 55.0) / 48.0) ** 2 < 1) & cav \
            & ~liver & ~spleen
        st_in = (((X - 0.25 * Ai) / 41.0) ** 2 + ((Y + 0.35 * Bi) / 34.0) ** 2 + ((Z + 55.0) / 44.0) ** 2 < 1)
        lab[st] = BWALL
        level = -0.35 * Bi + 38.0 * (1 - 2 * p["stomach_fill"])
        lab[st & st_in & (Y >= level)] = BFLUID
        lab[st & st_in & (Y < level)] = BAIR
        # pancreas (body/tail across the spine at ~L1)
        pan = _tube(X, Y, Z, (-15.0, yb - 55, -115.0), (0.45 * Ai, yb - 40, -95.0), 11.0)
        lab[pan & cav & (lab == FAT)] = PANCREAS
        # colon frame and small bowel loops below the liver
        ph = p["bowel_phase"]
        asc = ((X + 0.72 * Ai) ** 2 + (Y + 0.1 * Bi) ** 2 < 24.0 ** 2) & (Z < -120)
        desc = ((X - 0.78 * Ai) ** 2 + (Y - 0.05 * Bi) ** 2 < 20.0 ** 2) & (Z < -105)
        trans = ((Y + 0.62 * Bi) ** 2 + (Z + 135 + 20 * np.cos(X / 60.0)) ** 2 < 22.0 ** 2) & (np.abs(X) < 0.75 * Ai)
        colon = (asc | desc | trans) & cav & (lab.a == FAT)
        lab[colon] = BWALL
        col_in = colon
        mott = np.sin(X / 7.0 + ph[0]) * np.sin(Y / 6.0 + ph[1]) * np.sin(Z / 8.0 + ph[2])
        lab[col_in & (mott > 0.15)] = BAIR
        lab[col_in & (mott <= 0.15) & (mott > -0.3)] = STOOL
        loops = np.abs(np.sin(X / 11.0 + ph[0]) + np.sin(Y / 13.0 + ph[1]) + np.sin(Z / 12.0 + ph[2])) < 0.55
        sb = loops & cav & (Z < -140) & (lab == FAT) & (Y < yb - 20) & ((X / (0.7 * Ai)) ** 2 < 1)
        lab[sb] = BWALL
        core = np.abs(np.sin(X / 11.0 + ph[0]) + np.sin(Y / 13.0 + ph[1]) + np.sin(Z / 12.0 + ph[2])) < 0.28
        lab[sb & core] = BFLUID
        lab[sb & core & (np.sin(X / 37.0 + ph[1]) > 0.85)] = BAIR
        # kidneys: cortex, medullary pyramids, sinus fat, collecting system at the hilum
        for side, k in zip((-1, 1), self.kidneys):
            rmax = float(k.semi.max()) + 25.0
            bx = _box(X, Y, Z, k.centre - rmax, k.centre + rmax)
            if bx is None:
                continue
            Xb, Yb, Zb = X[..., bx[2]], Y[:, bx[1], :], Z[bx[0]]
            d = np.stack(np.broadcast_arrays(Xb - k.centre[0], Yb - k.centre[1], Zb - k.centre[2]), axis=-1) @ k.R
            sub = _Labels(lab.a[bx])
            cav_b = np.broadcast_to(cav, lab.a.shape)[bx]
            rk = np.sqrt(((d / k.semi) ** 2).sum(-1))
            kid = rk < 1.0
            sub[kid] = KCOR
            ang = np.arctan2(d[..., 2], d[..., 1] + 1e-6)
            pyramids = (rk > 0.45) & (rk < 0.8) & (np.cos(7 * ang) > -0.3)
            sub[kid & pyramids] = KMED
            hilum = kid & (rk < 0.45)
            sub[hilum] = KSINUS
            pelvis = ((d[..., 0] * side * -1 - 8) / 12.0) ** 2 + (d[..., 1] / 9.0) ** 2 + (d[..., 2] / 18.0) ** 2 < 1
            sub[kid & pelvis & (rk < 0.6)] = KCOL
            sub[pelvis & ~kid & (np.abs(d[..., 2]) < 14) & cav_b & (sub.a == FAT)] = KCOL  # renal pelvis
        # psoas, spine, paraspinal muscles
        ps_r = np.clip((-Z - 110) * 0.11 + 6, 0, 26)
        for s in (-1, 1):
            lab[((X - s * (26 + 0.4 * ps_r)) ** 2 + (Y - (yb - 4)) ** 2 < ps_r ** 2) & (Z < -110)] = MUSCLE
            lab[((X - s * 32) / 30.0) ** 2 + ((Y - (yb + 48)) / 24.0) ** 2 < 1] = MUSCLE
        vb = X ** 2 + (Y - yb) ** 2
        lab[vb < 21.0 ** 2] = CORT
        lab[vb < 18.5 ** 2] = CANC
        # discs every ~35 mm
        disc = np.abs(((Z + 1000) % 35.0) - 17.5) < 4.0
        lab[(vb < 21.0 ** 2) & disc] = MUSCLE
        post = ((X / 24.0) ** 2 + ((Y - yb - 42) / 16.0) ** 2 < 1) & ~disc
        lab[post] = CORT
        lab[X ** 2 + (Y - yb - 30) ** 2 < 9.0 ** 2] = CANAL
        # ribs (above the costal margin), pelvis below the iliac crest
        ring = ((((X / (Ai + 2)) ** 2 + (Y / (Bi + 2)) ** 2) > 0.9)
                & (((X / (Ai + 8)) ** 2 + (Y / (Bi + 8)) ** 2) < 1.05))
        ribs = ring & ((((Z - 0.35 * Y) / 26.0) % 1.0) < 0.3) & (Z > -150 + 0.8 * (-Y).clip(0))
        lab[ribs & ~((np.abs(X) < 0.3 * Ai) & (Y < 0) & (Z < -40))] = CORT
        below = Z < self.z_crest
        depth = np.clip((self.z_crest - Z) / 60.0, 0, 1)
        for s in (-1, 1):
            wing = ((X - s * (0.78 - 0.25 * depth) * Ai) / 12.0) ** 2 + ((Y - (yb + 5 - 30 * depth)) / 45.0) ** 2 < 1
            lab[wing & below] = CORT
            lab[wing & below & (((X - s * (0.78 - 0.25 * depth) * Ai) / 8.0) ** 2 < 1)] = CANC
        lab[(Z < self.z_crest - 40) & (((X / 48.0) ** 2 + ((Y - yb - 5) / 22.0) ** 2) < 1)] = CANC  # sacrum
        # vessels
        ra = p["aorta_radius_mm"]
        ao = ((X - 14) ** 2 + (Y - (yb - 32)) ** 2 < ra ** 2) & (Z > self.z_bif) & (Z < 40)
        lab[ao] = AORTA
        spread = np.clip(self.z_bif - Z, 0, None) * 0.4
        for s in (-1, 1):
            lab[((X - (14 + s * spread)) ** 2 + (Y - (yb - 28)) ** 2 < (0.65 * ra) ** 2) & (Z <= self.z_bif)] = AORTA
        ivc = (((X + 24) / 13.0) ** 2 + ((Y - (yb - 28)) / 9.5) ** 2 < 1) & (Z < 20) & (Z > self.z_bif - 10)
        lab[ivc] = IVC
        pv = _tube(X, Y, Z, (-5.0, yb - 58, -125.0), (c[0] + 15, yb - 62, -80.0), 7.0)
        pv |= _tube(X, Y, Z, (c[0] + 15, yb - 62, -80.0), (c[0] - 30, yb - 75, -55.0), 5.0)
        pv |= _tube(X, Y, Z, (c[0] + 15, yb - 62, -80.0), (5.0, -0.4 * Bi, -45.0), 4.5)
        pv |= _tube(X, Y, Z, (-5.0, yb - 58, -125.0), (-10.0, yb - 70, -220.0), 6.0)  # superior mesenteric vein
        lab[pv & (Z <= dome_r)] = PORTAL
        lab[~body & ~np.isin(lab.a, (TABLE, FOAM, FAT, MUSCLE, CORT, CANC))] = AIR  # keeps the arms and table
        return lab.a, np.broadcast_to(theta, shape)

    def hu_volume(self, lab: np.ndarray, contrast: dict[str, Any], tex: dict[str, float], theta: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
        hu = contrast["hu"]
        lut = np.zeros(len(NAMES), np.float32)
        fixed = {AIR: -1000.0, FAT: tex["fat"], CORT: tex["cortical"], CANC: tex["cancellous"], LUNG: tex["lung"],
                 KSINUS: tex["fat"] + 20.0, BFLUID: tex["fluid"], BAIR: -1000.0, STOOL: tex["stool"],
                 GALL: tex["bile"], TABLE: 150.0, CANAL: 25.0, FOAM: -850.0}
        for k, v in fixed.items():
            lut[k] = v
        lut[MUSCLE] = hu["muscle"]
        lut[BLOOD] = hu["blood"]
        lut[MYO] = hu["myocardium"]
        lut[LIVER] = hu["liver"]
        lut[SPLEEN] = hu["spleen"]
        lut[KCOR] = hu["renal_cortex"]
        lut[KMED] = hu["renal_medulla"]
        lut[KCOL] = hu["collecting_system"]
        lut[AORTA] = hu["aorta"]
        lut[IVC] = hu["ivc"]
        lut[PORTAL] = hu["portal_vein"]
        lut[PANCREAS] = hu["pancreas"]
        lut[BWALL] = hu["bowel_wall"]
        img = lut[lab]
        t = contrast["t_after_injection_s"]
        if t is not None and t < 50:  # arterial spleen: arciform (zebra) heterogeneity
            m = lab == SPLEEN
            img[m] += (25.0 * np.sin(9 * theta[m] + 0.05 * img[m])).astype(np.float32)
        return img


class _Labels:
    """uint8 label array that accepts masks broadcastable to it (2D in-plane masks apply to every slice)."""

    def __init__(self, a: np.ndarray):
        self.a = a

    def __setitem__(self, mask, value) -> None:
        self.a[np.broadcast_to(mask, self.a.shape)] = value

    def __eq__(self, other):  # type: ignore[override]
        return self.a == other

    def __ne__(self, other):  # type: ignore[override]
        return self.a != other


def _box(X, Y, Z, lo, hi) -> tuple[slice, slice, slice] | None:
    """Index box (z, y, x) of the chunk's coordinate vectors inside [lo, hi] (x, y, z mm)."""
    out = []
    for vec, a, b in ((Z.ravel(), lo[2], hi[2]), (Y.ravel(), lo[1], hi[1]), (X.ravel(), lo[0], hi[0])):
        idx = np.nonzero((vec >= a) & (vec <= b))[0]
        if not len(idx):
            return None
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def _tube(X, Y, Z, p0, p1, r) -> np.ndarray:
    """Mask (broadcast shape of X, Y, Z) of a cylinder of radius r from p0 to p1, evaluated in its bounding box."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    shape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
    out = np.zeros(shape, bool)
    bx = _box(X, Y, Z, np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
    if bx is None:
        return out
    Xb, Yb, Zb = X[..., bx[2]], Y[:, bx[1], :], Z[bx[0]]
    d = p1 - p0
    L2 = float(d @ d)
    s = np.clip(((Xb - p0[0]) * d[0] + (Yb - p0[1]) * d[1] + (Zb - p0[2]) * d[2]) / L2, 0, 1)
    dx, dy, dz = Xb - (p0[0] + s * d[0]), Yb - (p0[1] + s * d[1]), Zb - (p0[2] + s * d[2])
    out[bx] = dx * dx + dy * dy + dz * dz < r * r
    return out


def ct_noise(shape: tuple[int, int, int], pixel_mm: float, sigma: float, kernel_fc: float,
             rng: np.random.Generator) -> np.ndarray:
    """In-plane correlated noise with a filtered-backprojection-like power spectrum, NPS(f) ~ f * exp(-(f/fc)^2)
    (ramp times the kernel's apodisation); ``kernel_fc`` in cycles/mm (soft ~0.3, sharp ~0.7)."""
    nz, ny, nx = shape
    fy = np.fft.fftfreq(ny, d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(nx, d=pixel_mm)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    amp = np.sqrt(f * np.exp(-((f / kernel_fc) ** 2))).astype(np.float32)
    out = np.empty(shape, np.float32)
    for k in range(nz):
        w = rng.standard_normal((ny, nx)).astype(np.float32)
        out[k] = np.fft.irfft2(np.fft.rfft2(w) * amp, s=(ny, nx))
    sd = float(out.std()) or 1.0
    return out * (sigma / sd)
