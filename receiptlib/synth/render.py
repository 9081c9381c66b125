"""Render one flat receipt (the paper as it leaves the thermal printer) from a chain identity.

The chain fixes logo, fonts and layout family; the per-receipt RNG picks the store (header lines, printer)
and the template variant, jitters the paper's width and tint a little, and fixes the content (items,
prices, date, codes). Output is an RGBA image whose alpha holds the torn top and bottom edges; `img.info`
holds the logo's box (`logo_box`, so the photo stage can put a known chain's logo partly in frame, Fig. 10,
and mask it), the paper colour (`paper`), and which store and template printed it (`store`, `template`).
"""
from __future__ import annotations

import functools
from datetime import datetime, timedelta

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .chains import Chain, font_dir

PRODUCTS = (
    "MILK 2.8% 1L", "WHOLEGRAIN BREAD", "BANANAS", "APPLES GOLDEN", "EGGS M 10PCS", "BUTTER 250G", "YOGURT NATURAL",
    "CHEESE GOUDA", "HAM SLICED", "CHICKEN BREAST", "MINCED BEEF", "PASTA PENNE 500G", "RICE LONG GRAIN",
    "OLIVE OIL 1L", "SUNFLOWER OIL", "SUGAR 1KG", "FLOUR T-550", "COFFEE GROUND", "TEA BLACK 20X", "ORANGE JUICE",
    "MINERAL WATER 1.5L", "COLA 2L", "BEER 0.5L CAN", "RED WINE 0.75L", "TOMATOES", "POTATOES 2KG", "ONIONS",
    "CUCUMBER", "LETTUCE", "CHOCOLATE MILK", "BISCUITS", "CRISPS PAPRIKA", "TOILET PAPER 10R", "DISH SOAP",
    "SHAMPOO 400ML", "TOOTHPASTE", "DETERGENT 3L", "BATTERIES AA", "PLASTIC BAG", "NAPKINS", "SALT 1KG",
    "KRUH BIJELI", "MLIJEKO 1L", "JOGURT", "SIR TRAPIST", "PILETINA", "KOBASICE", "JABUKE", "NARANCE",
    "TJESTENINA", "RIZA", "KAVA", "CAJ", "SOK NARANCA", "VODA", "PIVO", "VINO", "KECAP", "MAJONEZA", "SLADOLED",
    "SPINACH FROZEN", "FISH FILLET", "TUNA CAN", "PEAS CAN", "CORN FLAKES", "OATMEAL", "HONEY 450G", "JAM APRICOT",
    "PAPRIKA RED", "GARLIC", "LEMONS", "CAT FOOD", "DOG FOOD 3KG", "NEWSPAPER", "GUM MINT", "BREAD ROLLS 6X",
)
TAX_RATES = (("A", 25), ("B", 13), ("C", 5))


@functools.lru_cache(maxsize=512)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A matplotlib-shipped TTF at a pixel size; cached per process (font loading dominates otherwise)."""
    return ImageFont.truetype(str(font_dir() / name), max(4, int(size)), layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=64)
def _advance(name: str) -> float:
    """Width of an average character per pixel of font size (digits and capitals, as receipts print)."""
    f = load_font(name, 100)
    return f.getlength("0123456789ABCDEFGHIJ") / 20 / 100


def _bold_of(name: str) -> tuple[str, int]:
    """Bold variant of a body font, or the font itself with a fake-bold stroke."""
    for a, b in (("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"), ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"),
                 ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"), ("DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf")):
        if name == a:
            return b, 0
    return name, 1


def _money(v: float, chain: Chain) -> str:
    return f"{v:.2f}".replace(".", chain.decimal)


class _Pen:
    """Draws lines of text top to bottom on an ink mask (255 = ink)."""

    def __init__(self, img: Image.Image, chain: Chain, width: int):
        self.img, self.draw, self.c, self.W = img, ImageDraw.Draw(img), chain, width
        self.m = max(3, int(width * 0.045))
        self.size = max(5, int((width - 2 * self.m) / (chain.body_chars * _advance(chain.body_font))))
        self.font = load_font(chain.body_font, self.size)
        bname, self.bstroke = _bold_of(chain.body_font)
        self.bold = load_font(bname, self.size)
        self.small = load_font(chain.body_font, max(4, int(self.size * 0.85)))
        self.lh = int(round(self.size * chain.line_spacing))
        self.y = 0

    def fits(self, lines: int = 1) -> bool:
        return self.y + lines * self.lh < self.img.height - 4 * self.lh

    def text(self, s: str, align: str = "left", font=None, stroke: int = 0, fill: int = 255):
        font = font or self.font
        w = font.getlength(s)
        x = {"left": self.m, "center": (self.W - w) / 2, "right": self.W - self.m - w}[align]
        self.draw.text((x, self.y), s, font=font, fill=fill, stroke_width=stroke, stroke_fill=fill)
        self.y += self.lh

    def lr(self, left: str, right: str, font=None, stroke: int = 0, advance: bool = True):
        font = font or self.font
        rw = font.getlength(right)
        room = self.W - 2 * self.m - rw - font.getlength("  ")
        while left and font.getlength(left) > room:
            left = left[:-1]
        self.draw.text((self.m, self.y), left, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        self.draw.text((self.W - self.m - rw, self.y), right, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        if advance:
            self.y += self.lh

    def sep(self):
        s, c = self.c.separator, self.c
        if s == "none":
            self.y += self.lh // 2
            return
        y = self.y + self.lh // 2
        t = max(1, self.size // 9)
        if s == "solid":
            self.draw.line((self.m, y, self.W - self.m, y), fill=255, width=t)
        elif s == "double":
            self.draw.line((self.m, y - t - 1, self.W - self.m, y - t - 1), fill=255, width=t)
            self.draw.line((self.m, y + t + 1, self.W - self.m, y + t + 1), fill=255, width=t)
        elif s == "dashed":
            step = max(4, self.size // 2)
            for x in range(self.m, self.W - self.m, step * 2):
                self.draw.line((x, y, x + step, y), fill=255, width=t)
        else:
            n = int((self.W - 2 * self.m) / self.font.getlength(s))
            self.text(s * n, "center")
            return
        self.y += self.lh


def _emblem(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill: bool, ink: int):
    w = max(1, int(r * 0.18))
    f = ink if fill else None
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=f, outline=ink, width=w)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=ink, width=w)
        draw.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=f, outline=ink, width=w)
    elif kind in ("diamond", "square", "triangle", "hexagon"):
        sides, rot = {"diamond": (4, 0), "square": (4, 45), "triangle": (3, 0), "hexagon": (6, 0)}[kind]
        draw.regular_polygon((cx, cy, r), sides, rotation=rot, fill=f, outline=ink, width=w)
    elif kind == "star":
        pts = []
        for k in range(10):
            a = np.pi / 2 + k * np.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy - rr * np.sin(a)))
        draw.polygon(pts, fill=f, outline=ink, width=w)
    elif kind == "stripes":
        for k in (-1, 0, 1):
            x = cx + k * r * 0.7
            draw.polygon([(x - r * 0.15, cy + r), (x + r * 0.35, cy - r), (x + r * 0.6, cy - r), (x + r * 0.1, cy + r)], fill=ink)
    elif kind == "leaf":
        draw.chord((cx - r, cy - r * 1.2, cx + r * 1.4, cy + r * 1.2), 100, 260, fill=f, outline=ink, width=w)
        draw.chord((cx - r * 1.4, cy - r * 1.2, cx + r, cy + r * 1.2), 280, 80, fill=f, outline=ink, width=w)
        draw.line((cx - r * 0.8, cy + r * 0.8, cx + r * 0.6, cy - r * 0.6), fill=0 if fill else ink, width=w)
    elif kind == "sun":
        draw.ellipse((cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5), fill=f, outline=ink, width=w)
        for k in range(8):
            a = k * np.pi / 4
            draw.line((cx + r * 0.65 * np.cos(a), cy + r * 0.65 * np.sin(a), cx + r * np.cos(a), cy + r * np.sin(a)), fill=ink, width=w)
    elif kind == "cart":
        draw.line((cx - r, cy - r * 0.7, cx - r * 0.6, cy - r * 0.7, cx - r * 0.3, cy + r * 0.4, cx + r * 0.8, cy + r * 0.4,
                   cx + r, cy - r * 0.4, cx - r * 0.45, cy - r * 0.4), fill=ink, width=w, joint="curve")
        for x in (cx - r * 0.15, cx + r * 0.6):
            draw.ellipse((x - r * 0.16, cy + r * 0.6, x + r * 0.16, cy + r * 0.92), fill=ink)


def _draw_logo(mask: Image.Image, chain: Chain, W: int, y0: int) -> tuple[int, tuple[int, int, int, int]]:
    """Wordmark (+ emblem, + style) centred or left; returns the next y and the logo box."""
    draw = ImageDraw.Draw(mask)
    fs = max(6, int(chain.logo_scale * W / 0.72))
    has_em = chain.emblem != "none"
    for _ in range(12):  # shrink until the group fits 88% of the width
        font = load_font(chain.logo_font, fs)
        track = chain.logo_tracking * fs
        widths = [font.getlength(ch) for ch in chain.wordmark]
        tw = sum(widths) + track * (len(widths) - 1)
        asc, desc = font.getmetrics()
        th = asc + desc * 0.3
        er = th * 0.55 if chain.emblem_pos != "above" else th * 0.75
        gw = tw + (2 * er + fs * 0.3 if has_em and chain.emblem_pos != "above" else 0)
        if gw <= W * 0.88 or fs <= 6:
            break
        fs = int(fs * 0.88)
    pad = fs * 0.25
    gh = th + (2 * er + pad if has_em and chain.emblem_pos == "above" else 0)
    x0 = (W - gw) / 2 if chain.header_align == "center" else W * 0.06
    y = y0 + pad * 1.5
    box = (int(x0 - pad), int(y0), int(x0 + gw + pad), int(y + gh + pad))
    ink, paper = 255, 0
    if chain.logo_style == "inverted":
        draw.rounded_rectangle((box[0], box[1], box[2], box[3]), radius=int(pad), fill=255)
        ink = 0
    elif chain.logo_style == "boxed":
        draw.rectangle(box, outline=255, width=max(1, int(fs * 0.07)))
    elif chain.logo_style == "double_rule":
        for yy in (box[1], box[3]):
            draw.line((W * 0.04, yy, W * 0.96, yy), fill=255, width=max(1, int(fs * 0.06)))
    tx, ty = x0, y
    if has_em:
        if chain.emblem_pos == "above":
            _emblem(draw, chain.emblem, x0 + gw / 2, y + er, er, chain.emblem_fill, ink)
            ty = y + 2 * er + pad
        elif chain.emblem_pos == "left":
            _emblem(draw, chain.emblem, x0 + er, y + th / 2, er, chain.emblem_fill, ink)
            tx = x0 + 2 * er + fs * 0.3
        else:
            _emblem(draw, chain.emblem, x0 + tw + fs * 0.3 + er, y + th / 2, er, chain.emblem_fill, ink)
    outlined = chain.logo_style == "outlined"
    sw = max(1, int(fs * 0.05))
    x = tx
    for ch, w in zip(chain.wordmark, widths):
        if outlined:
            draw.text((x, ty), ch, font=font, fill=paper, stroke_width=sw, stroke_fill=255)
        else:
            draw.text((x, ty), ch, font=font, fill=ink)
        x += w + track
    if chain.logo_style == "underlined":
        uy = ty + th + pad * 0.4
        draw.line((tx, uy, tx + tw, uy), fill=255, width=max(1, int(fs * 0.08)))
    return int(box[3] + pad), box


def _barcode(draw, pen: _Pen, rng, kind: str):
    W = pen.W
    if kind == "qr":
        n = 25
        cell = max(1, int(W * 0.32 / n))
        x0 = (W - n * cell) // 2
        bits = rng.random((n, n)) < 0.5
        for (fy, fx) in ((0, 0), (0, n - 7), (n - 7, 0)):
            bits[fy:fy + 7, fx:fx + 7] = False
            bits[fy, fx:fx + 7] = bits[fy + 6, fx:fx + 7] = True
            bits[fy:fy + 7, fx] = bits[fy:fy + 7, fx + 6] = True
            bits[fy + 2:fy + 5, fx + 2:fx + 5] = True
        ys, xs = np.nonzero(bits)
        for yy, xx in zip(ys, xs):
            draw.rectangle((x0 + xx * cell, pen.y + yy * cell, x0 + xx * cell + cell - 1, pen.y + yy * cell + cell - 1), fill=255)
        pen.y += n * cell + pen.lh // 2
        return
    widths = rng.integers(1, 5, 61 if kind == "code128" else 59)
    unit = max(1.0, W * 0.72 / widths.sum())
    h = int(W * (0.13 if kind == "code128" else 0.18))
    x = (W - widths.sum() * unit) / 2
    for i, w in enumerate(widths):
        if i % 2 == 0:
            draw.rectangle((int(x), pen.y, max(int(x), int(x + w * unit) - 1), pen.y + h), fill=255)
        x += w * unit
    pen.y += h + 2
    pen.text(" ".join("".join(str(int(d)) for d in rng.integers(0, 10, 4)) for _ in range(3)), "center", font=pen.small)


def _items(rng) -> list[tuple[str, float, float, str, bool]]:
    n = int(min(22, 2 + rng.geometric(0.12)))
    out = []
    for _ in range(n):
        name = PRODUCTS[int(rng.integers(len(PRODUCTS)))]
        weighed = rng.random() < 0.12
        qty = round(float(rng.uniform(0.1, 2.5)), 3) if weighed else int(rng.choice([1, 1, 1, 1, 1, 2, 2, 3, 4, 6]))
        unit = round(float(np.exp(rng.normal(1.0, 0.9))), 2) + 0.09
        code, _ = TAX_RATES[int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
        out.append((name, qty, unit, code, weighed))
    return out


def _double_height(img: Image.Image, pen: _Pen, text: str, right: str, invert: bool):
    """Thermal printers' double-height total line: draw normally, then stretch vertically 2x."""
    f = pen.bold
    strip = Image.new("L", (pen.W, pen.lh), 255 if invert else 0)
    d = ImageDraw.Draw(strip)
    fill = 0 if invert else 255
    d.text((pen.m, 0), text, font=f, fill=fill, stroke_width=pen.bstroke, stroke_fill=fill)
    rw = f.getlength(right)
    d.text((pen.W - pen.m - rw, 0), right, font=f, fill=fill, stroke_width=pen.bstroke, stroke_fill=fill)
    strip = strip.resize((pen.W, pen.lh * 2), Image.BILINEAR)
    img.paste(strip, (0, pen.y))
    pen.y += pen.lh * 2


def _layout(mask: Image.Image, logo: Image.Image, chain: Chain, rng: np.random.Generator,
            store_number: int | None = None) -> tuple[int, tuple]:
    W = mask.width
    pen = _Pen(mask, chain, W)
    draw = pen.draw
    y, logo_box = _draw_logo(logo, chain, W, int(W * 0.05))
    pen.y = y
    al = chain.header_align
    if chain.tagline:
        pen.text(chain.tagline.upper() if chain.item_upper else chain.tagline, al, font=pen.small)
    pen.text(chain.legal_name, al, font=pen.small)
    for line in chain.address:
        pen.text(line, al, font=pen.small)
    if chain.phone:
        pen.text(chain.phone, al, font=pen.small)
    if chain.tax_id:
        pen.text(chain.tax_id, al, font=pen.small)
    drawn = int(rng.integers(1, chain.n_stores + 1))  # drawn either way: the content stream stays aligned
    store = chain.store_fmt.format(n=store_number if store_number is not None else drawn)
    when = datetime(2017, 1, 1) + timedelta(minutes=int(rng.integers(0, 2 * 365 * 24 * 60)))
    date = when.strftime(chain.date_fmt)
    rno = f"{int(rng.integers(1, 9999))}/{int(rng.integers(1, 40))}/{int(rng.integers(1, 9))}"
    pen.text(store, al, font=pen.small)
    pen.sep()
    if chain.date_pos == "header":
        pen.lr(date, f"#{rno}")
        pen.text(f"{'Cashier' if rng.random() < 0.5 else 'Blagajnik'}: {int(rng.integers(1, 99)):02d}", "left")
        pen.sep()
    total = 0.0
    by_code: dict[str, float] = {}
    for name, qty, unit, code, weighed in _items(rng):
        if not pen.fits(3):
            break
        name = name if chain.item_upper else name.title()
        line_total = round(qty * unit, 2)
        total += line_total
        by_code[code] = by_code.get(code, 0.0) + line_total
        tax = {"letters": f" {code}", "star": " *" if code == "A" else "  ", "none": "",
               "percent": f" {dict(TAX_RATES)[code]:>2}%"}[chain.tax_codes]
        price = _money(line_total, chain) + tax
        q = f"{qty:.3f} kg" if weighed else f"{qty}"
        if chain.columns == "name_price":
            pen.lr(name, price)
            if weighed or qty != 1:
                pen.text(f"  {q} x {_money(unit, chain)}", "left", font=pen.small)
        elif chain.columns == "qty_name_price":
            pen.lr(f"{q if not weighed else '1'} x {name}", price)
        elif chain.columns == "code_name_price":
            pen.lr(f"{int(rng.integers(1000, 999999)):06d} {name}", price)
        else:  # name on its own line, quantity line under it with the price
            pen.text(name, "left")
            pen.lr(f"   {q} x {_money(unit, chain)}", price)
    pen.sep()
    cur = f" {chain.currency}" if chain.currency else ""
    tot = _money(total, chain) + cur
    if chain.total_style == "double":
        _double_height(mask, pen, chain.total_label, tot, False)
    elif chain.total_style == "inverted":
        draw.rectangle((pen.m - 2, pen.y - 1, W - pen.m + 2, pen.y + pen.lh), fill=255)
        f = pen.bold
        draw.text((pen.m, pen.y), chain.total_label, font=f, fill=0)
        draw.text((W - pen.m - f.getlength(tot), pen.y), tot, font=f, fill=0)
        pen.y += pen.lh + 2
    else:
        top = pen.y
        pen.lr(chain.total_label, tot, font=pen.bold, stroke=pen.bstroke)
        if chain.total_style == "boxed":
            draw.rectangle((pen.m - 3, top - 2, W - pen.m + 3, pen.y), outline=255, width=max(1, pen.size // 8))
            pen.y += 3
    if rng.random() < 0.6:
        pen.lr(f"CARD **** {int(rng.integers(0, 9999)):04d}", _money(total, chain))
    else:
        paid = float(np.ceil(total / 10) * 10)
        pen.lr("CASH", _money(paid, chain))
        pen.lr("CHANGE", _money(paid - total, chain))
    if chain.tax_table:
        pen.sep()
        pen.lr(f"{chain.tax_label} %", "BASE     TAX", font=pen.small)
        for code, rate in TAX_RATES:
            if code in by_code and pen.fits():
                gross = by_code[code]
                base = gross / (1 + rate / 100)
                pen.lr(f"{code} {rate}%", f"{_money(base, chain)}   {_money(gross - base, chain)}", font=pen.small)
    pen.sep()
    fa = chain.footer_align
    if chain.date_pos == "footer":
        pen.text(date, fa)
        pen.text(f"Receipt {rno}", fa, font=pen.small)
    if chain.fiscal_codes:
        hexs = "".join("0123456789abcdef"[int(d)] for d in rng.integers(0, 16, 32))
        pen.text(f"ZKI: {hexs}", "left", font=pen.small)
        pen.text(f"JIR: {hexs[:8]}-{hexs[8:12]}-{hexs[12:16]}-{hexs[16:20]}", "left", font=pen.small)
    if chain.barcode != "none":
        pen.y += pen.lh // 3
        _barcode(draw, pen, rng, chain.barcode)
    if chain.slogan:
        pen.text(chain.slogan, fa, font=pen.bold, stroke=pen.bstroke)
    if chain.survey:
        pen.text(chain.survey, fa, font=pen.small)
    pen.text(chain.thanks, fa)
    return pen.y + pen.lh, logo_box


def _smooth_1d(rng, n: int, knots: int) -> np.ndarray:
    k = rng.random(knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), k).astype(np.float32)


def render_receipt(chain: Chain, rng: np.random.Generator, *, width: int = 240, store: int | None = None,
                   template: int | None = None) -> Image.Image:
    """One receipt of `chain`, `width` pixels across for an 80 mm roll (58 mm rolls come out narrower).

    Returns RGBA (alpha = paper incl. torn edges); `info["logo_box"]` is the logo's (x0, y0, x1, y1),
    `info["paper"]` the paper's RGB, `info["store"]` and `info["template"]` the variant's indices (-1 for a
    chain without stores or templates). `store` and `template` force a variant (the draws are made anyway).
    """
    drawn_store = int(rng.integers(len(chain.stores))) if chain.stores else -1
    drawn_template = int(rng.integers(len(chain.templates))) if chain.templates else -1
    for name, v, n in (("store", store, len(chain.stores)), ("template", template, len(chain.templates))):
        if v is not None and not 0 <= v < n:
            raise ValueError(f"render_receipt: {name}={v} but chain {chain.name!r} has {n} {name}s")
    store = drawn_store if store is None else store
    template = drawn_template if template is None else template
    store_number = chain.stores[store].number if chain.stores else None
    if chain.stores and chain.templates:
        chain = chain.receipt_variant(store, template)
    # the same roll width varies a little between printers and with the photo's crop; tints overlap
    W = max(64, int(round(width * (chain.paper_mm / 80.0) * rng.uniform(0.94, 1.06))))
    tint = tuple(int(np.clip(t + d, 200, 255)) for t, d in zip(chain.tint, rng.integers(-7, 8, 3)))
    H = int(W * 5)
    mask = Image.new("L", (W, H), 0)
    logo = Image.new("L", (W, H), 0)
    height, logo_box = _layout(mask, logo, chain, rng, store_number)
    height = min(H, int(height))
    m = np.asarray(mask, dtype=np.float32)[:height] * (1 / 255.0)
    lg = np.asarray(logo)[:height]
    # Thermal print: uneven darkness along the roll and weak print-head columns.
    row = 1.0 - chain.fade * _smooth_1d(rng, height, 6)
    col = 1.0 - chain.fade * 0.8 * (rng.random(W) < 0.03).astype(np.float32) * rng.random(W).astype(np.float32)
    if chain.logo_color is None:
        m = np.maximum(m, lg * np.float32(1 / 255.0))
    m *= row[:, None]
    m *= col[None, :]
    paper = np.array(tint, np.float32)
    inkc = np.array([chain.ink, chain.ink, chain.ink + 12], np.float32)
    out = paper + (inkc - paper) * m[..., None]
    if chain.logo_color is not None:
        x0, y0, x1, y1 = (max(0, v) for v in logo_box)
        a = lg[y0:y1, x0:x1, None].astype(np.float32) * np.float32(0.92 / 255.0)
        out[y0:y1, x0:x1] += (np.array(chain.logo_color, np.float32) - out[y0:y1, x0:x1]) * a
    alpha = np.full((height, W), 255, np.uint8)
    # Torn edges: the top is cut by the printer's blade (nearly straight), the bottom torn (ragged).
    amp = max(1.0, W * 0.012)
    tear = (np.abs(np.cumsum(rng.normal(0, 0.6, W))) % amp).astype(int) + 1
    rows = np.arange(height)[:, None]
    alpha[rows >= height - tear[None, :]] = 0
    alpha[rows < (rng.random(W) * 1.5).astype(int)[None, :]] = 0
    img = Image.fromarray(np.dstack([np.clip(out, 0, 255).astype(np.uint8), alpha]), "RGBA")
    img.info.update(logo_box=logo_box, paper=tint, store=store, template=template)
    return img
