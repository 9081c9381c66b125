"""Chain identities: the 25 known retail chains and the unknown ones that make up Other.

Each `Chain` is what the paper says identifies a chain on a photo (section II): the logo, but also the
fonts and the layout family of header, body and footer. A chain is not one fixed receipt: it has several
stores (address, phone, store number, each with its own printer: ink density, fading, print weight) and
two or three template variants (separators, columns, total style, barcode, ...), and every receipt's paper
width and tint vary a little, so a chain is its logo, fonts and layout family, not a colour swatch.
Everything is drawn deterministically from the world seed. Unknown chains include *lookalikes*: a known
chain's logo (same font, emblem and style, the wordmark identical or one letter off), either on a receipt
whose layout is their own (kind "logo") or on the known chain's own point-of-sale template family too
(kind "logo_and_template": the paper's Figures 8 and 9, practically identical logos from different firms),
the case no threshold on the max logit can fix.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# Fictional names only (checked against no brand list, invented for this project). Used as folder names,
# hence simple CamelCase ASCII.
KNOWN_NAMES = (
    "Brunvik", "KovaMarket", "Lumora", "Tessaro", "Veldana", "Orvisto", "Pelmora", "Zaltrix", "Quenby",
    "Halvora", "Ostrela", "Dravin", "Mirelka", "Sonvale", "Trekko", "Ulmara", "Vexmont", "Wendrik",
    "Yarlina", "Fennick", "Gastova", "Ibrena", "Jorvala", "Kalmuro", "Nistra",
)
UNKNOWN_NAMES = (
    "Abrevo", "Bellunta", "Cordavi", "Delmiro", "Estavo", "Farrowby", "Grenmoor", "Hollisk", "Irvato",
    "Jassamo", "Korvello", "Lindquay", "Mornessa", "Norvado", "Ombrell", "Prastavik", "Quillon", "Rusteva",
    "Salvenko", "Tindrel", "Umbrava", "Vornika", "Wixley", "Zephrana", "Corvallo", "Derrimo", "Elsmark",
    "Futaro", "Gildane", "Hexmoor", "Istrova", "Kelbrin", "Loventa", "Marvesk", "Nodrena", "Pirlani",
)

SYLLABLES = ("bra", "ven", "lo", "mar", "ti", "ka", "ro", "sel", "dun", "vi", "na", "tor", "el", "qu", "zan", "po")

# Fonts that ship with matplotlib, chosen by file name (never by system lookup) so a world is the same
# on every machine with the same matplotlib. Symbol-only fonts (cmex, cmsy, STIXSiz*, STIXNonUni*) are left out.
LOGO_FONTS = (
    "DejaVuSans-Bold.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-BoldItalic.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif.ttf", "STIXGeneral.ttf",
    "STIXGeneralBol.ttf", "STIXGeneralBolIta.ttf", "STIXGeneralItalic.ttf", "cmb10.ttf", "cmr10.ttf",
    "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
# Receipt bodies are mostly monospace thermal fonts; a few chains print a proportional one.
BODY_FONTS = (
    "DejaVuSansMono.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "cmtt10.ttf", "cmtt10.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSans.ttf", "cmss10.ttf", "DejaVuSerif.ttf",
)
EMBLEMS = ("none", "none", "circle", "ring", "diamond", "triangle", "star", "square", "hexagon", "stripes", "leaf", "sun", "cart")
LOGO_STYLES = ("plain", "plain", "inverted", "boxed", "underlined", "outlined", "double_rule")
SEPARATORS = ("-", "=", "*", ".", "_", "~", "solid", "dashed", "double", "none")
COLUMNS = ("name_price", "qty_name_price", "name_qtyline_price", "code_name_price")
TOTAL_LABELS = ("TOTAL", "UKUPNO", "ZA PLATITI", "SUM", "AMOUNT DUE", "TOTAL EUR", "BALANCE", "TO PAY")
TAX_LABELS = ("PDV", "VAT", "TAX", "MWST", "IVA")
DATE_FORMATS = ("%d.%m.%Y %H:%M", "%Y-%m-%d %H:%M:%S", "%d/%m/%y %H:%M", "%m/%d/%Y %I:%M", "%d.%m.%y. %H:%M:%S")
STORE_FORMATS = ("Store #{n:04d}", "PJ {n}", "Prodavaonica {n:03d}", "Shop {n}", "Market br. {n}", "Branch {n:02d}", "Filijala {n}")
STREETS = ("Ilica", "Vukovarska", "Main St.", "Savska cesta", "Harbour Rd.", "Lipova", "Old Mill Lane", "Trg bana",
           "Radnicka", "Ulica lipa", "Station Sq.", "Obala", "Hill Rd.", "Kestenova")
CITIES = ("10000 Zagreb", "21000 Split", "51000 Rijeka", "31000 Osijek", "Northbridge 4410", "23000 Zadar",
          "Eastham 2231", "42000 Varazdin", "Millbrook 7720", "20000 Dubrovnik")
SLOGANS = ("Fresh every day", "Quality you can trust", "Always close to you", "More for less", "Your neighbourhood store",
           "Good food, fair prices", "See you soon!", "Smart shopping", "Since 1994", "Thank you for shopping local",
           "Best prices in town", "Every day a little better", "Naturally good", "Your daily market")
THANKS = ("THANK YOU!", "Hvala na kupnji!", "Thank you, come again", "HVALA I DOVIDJENJA", "Thanks for your visit",
          "*** THANK YOU ***", "Have a nice day!")
TAGLINES = ("market", "supermarket", "discount", "food & more", "hipermarket", "express", "drogerie", "fresh", "store", "cash & carry")
CURRENCIES = ("EUR", "EUR", "kn", "HRK", "", "", "€")
BARCODES = ("code128", "code128", "ean", "qr", "none")


@dataclass(frozen=True)
class Store:
    """One shop of a chain: what its receipts print in the header, and its printer."""

    number: int
    address: tuple[str, ...]
    phone: str | None
    ink: int  # darkness of this printer's print, 0 = black
    fade: float  # how unevenly its print head prints
    heavy: bool  # printer set to heavy print: the body font one stroke bolder


@dataclass(frozen=True)
class Template:
    """A variant of a chain's point-of-sale template: what changes between its printer firmware versions."""

    separator: str
    columns: str
    total_style: str
    tax_table: bool
    date_pos: str
    barcode: str
    line_spacing: float
    body_chars: int


# Chain fields a template variant sets (the rest of the layout family is the chain's own)
TEMPLATE_FIELDS = tuple(f for f in Template.__dataclass_fields__)
# What a "logo_and_template" lookalike copies from its target besides the logo: the whole point-of-sale
# template family (fonts, layout, paper); it keeps its own firm: legal name, stores, tax id, slogan, survey.
TEMPLATE_FAMILY = (
    "header_align", "body_font", "body_chars", "line_spacing", "separator", "columns", "item_upper", "decimal",
    "currency", "tax_codes", "total_label", "total_style", "tax_label", "tax_table", "date_fmt", "date_pos",
    "fiscal_codes", "barcode", "thanks", "footer_align", "paper_mm", "tint", "ink", "fade", "store_fmt",
    "templates",
)
LOOKALIKE_KINDS = ("logo", "logo_and_template")


@dataclass(frozen=True)
class Chain:
    """A retail chain's visual identity (what a receipt from it looks like), before any photo is taken."""

    name: str  # folder name for known chains; recorded in the manifest's `chain` column for all
    known: bool
    lookalike_of: str | None  # the known chain whose logo this unknown chain (nearly) copies (paper Figs 8-9)
    lookalike_kind: str | None  # logo | logo_and_template (see LOOKALIKE_KINDS); None for the others
    # logo
    wordmark: str
    logo_font: str
    logo_style: str  # plain | inverted | boxed | underlined | outlined | double_rule
    logo_scale: float  # wordmark cap height as a fraction of the paper width
    logo_tracking: float  # extra letter spacing, fraction of the font size
    emblem: str
    emblem_pos: str  # left | right | above
    emblem_fill: bool
    logo_color: tuple[int, int, int] | None  # preprinted coloured logo, else thermal ink
    tagline: str | None
    # header
    header_align: str  # center | left
    legal_name: str
    address: tuple[str, ...]
    phone: str | None
    store_fmt: str
    tax_id: str | None
    n_stores: int
    # body
    body_font: str
    body_chars: int  # characters per line: sets the body font size against the paper width
    line_spacing: float
    separator: str
    columns: str
    item_upper: bool
    decimal: str
    currency: str
    tax_codes: str  # letters | star | percent | none
    total_label: str
    total_style: str  # bold | double | boxed | inverted
    tax_label: str
    tax_table: bool
    date_fmt: str
    date_pos: str  # header | footer
    fiscal_codes: bool  # Croatian-style ZKI/JIR lines
    # footer
    barcode: str
    slogan: str | None
    survey: str | None
    thanks: str
    footer_align: str
    # paper
    paper_mm: int  # 58 or 80 mm thermal rolls (sets the aspect of the receipt)
    tint: tuple[int, int, int]
    ink: int  # darkness of the thermal print, 0 = black
    fade: float  # how unevenly the print head prints
    # variation within the chain: a receipt comes from one store (its header lines and printer) and one
    # template variant; the fields above are the chain's family (variant 0, the first store)
    stores: tuple[Store, ...] = ()
    templates: tuple[Template, ...] = ()

    def receipt_variant(self, store: int, template: int) -> "Chain":
        """The chain as one store prints it with one template variant (what `render_receipt` draws)."""
        s, t = self.stores[store], self.templates[template]
        return replace(self, address=s.address, phone=s.phone, ink=s.ink, fade=s.fade,
                       body_font=_heavier(self.body_font) if s.heavy else self.body_font,
                       **{f: getattr(t, f) for f in TEMPLATE_FIELDS})


@dataclass(frozen=True)
class World:
    """All chains of one seed: known ones (in all splits) and the disjoint val / test unknown chains."""

    seed: int
    known: tuple[Chain, ...]
    unknown_val: tuple[Chain, ...]
    unknown_test: tuple[Chain, ...]
    _by_name: dict = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {c.name: c for c in self.known + self.unknown_val + self.unknown_test})

    @property
    def known_names(self) -> list[str]:
        return sorted(c.name for c in self.known)

    def chain(self, name: str) -> Chain:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no chain named {name!r} in the world of seed {self.seed}") from None

    def unknown(self, split: str) -> tuple[Chain, ...]:
        """Unknown chains of a split: none in train (Other never appears there)."""
        return {"train": (), "val": self.unknown_val, "test": self.unknown_test}[split]

    def lookalikes(self, split: str) -> tuple[Chain, ...]:
        return tuple(c for c in self.unknown(split) if c.lookalike_of)

    def plain_unknown(self, split: str) -> tuple[Chain, ...]:
        return tuple(c for c in self.unknown(split) if not c.lookalike_of)


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=None)
def available_fonts() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in font_dir().glob("*.ttf")))


HEAVIER = {"DejaVuSansMono.ttf": "DejaVuSansMono-Bold.ttf", "DejaVuSans.ttf": "DejaVuSans-Bold.ttf",
           "DejaVuSerif.ttf": "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Oblique.ttf": "DejaVuSansMono-BoldOblique.ttf"}


def _heavier(font: str) -> str:
    return HEAVIER.get(font, font)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _fonts(options):
    have = set(available_fonts())
    kept = tuple(f for f in options if f in have)
    if not kept:
        raise RuntimeError(f"none of the fonts {options} found in {font_dir()}; is matplotlib installed?")
    return kept


def _split_camel(name: str) -> str:
    out = name[0]
    for ch in name[1:]:
        out += (" " + ch) if ch.isupper() else ch
    return out


def _wordmark(name: str, rng) -> str:
    text = _split_camel(name) if rng.random() < 0.6 else name
    r = rng.random()
    return text.upper() if r < 0.55 else (text.lower() if r < 0.65 else text)


def _digits(rng, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, n))


def _phone(rng) -> str:
    return f"Tel: 0{int(rng.integers(1, 60))}/{_digits(rng, 3)}-{_digits(rng, 4)}"


def _stores(chain: Chain, rng) -> tuple[Store, ...]:
    """Two to five shops; the first prints the chain's own address and phone."""
    out = [Store(int(rng.integers(1, chain.n_stores + 1)), chain.address, chain.phone, chain.ink, chain.fade, False)]
    for _ in range(int(rng.integers(1, 5))):
        out.append(Store(
            number=int(rng.integers(1, chain.n_stores + 1)),
            address=(f"{_pick(rng, STREETS)} {int(rng.integers(1, 200))}", _pick(rng, CITIES)),
            phone=_phone(rng) if chain.phone else None,
            ink=int(np.clip(chain.ink + rng.integers(-25, 26), 5, 90)),
            fade=float(np.clip(chain.fade + rng.uniform(-0.1, 0.25), 0.0, 0.6)),
            heavy=bool(rng.random() < 0.3)))
    return tuple(out)


def _templates(chain: Chain, rng) -> tuple[Template, ...]:
    """The chain's template (variant 0) and one or two variants, each changing two or three of its fields."""
    base = Template(**{f: getattr(chain, f) for f in TEMPLATE_FIELDS})

    def other(options, current):
        return _pick(rng, tuple(o for o in options if o != current))

    def nudged(v, lo, hi, step_lo, step_hi):
        step = rng.uniform(step_lo, step_hi)
        return v + step if v + step <= hi else v - step  # away from the edge, so it always changes

    options = {
        "separator": lambda: other(SEPARATORS, base.separator), "columns": lambda: other(COLUMNS, base.columns),
        "total_style": lambda: other(("bold", "double", "boxed", "inverted"), base.total_style),
        "tax_table": lambda: not base.tax_table, "date_pos": lambda: "footer" if base.date_pos == "header" else "header",
        "barcode": lambda: other(BARCODES, base.barcode),
        "line_spacing": lambda: float(nudged(base.line_spacing, 1.0, 1.5, 0.08, 0.15)),
        "body_chars": lambda: int(round(nudged(base.body_chars, 26, 46, 2, 4.99))),
    }
    out = [base]
    for _ in range(int(rng.integers(1, 3))):
        changed = rng.permutation(len(TEMPLATE_FIELDS))[: int(rng.integers(2, 4))]
        variant = replace(base, **{TEMPLATE_FIELDS[i]: options[TEMPLATE_FIELDS[i]]() for i in changed})
        if variant not in out:
            out.append(variant)
    return tuple(out)


def _with_variation(chain: Chain, rng) -> Chain:
    return replace(chain, stores=_stores(chain, rng), templates=_templates(chain, rng))


def _identity(name: str, known: bool, rng: np.random.Generator) -> Chain:
    """Draw a full identity; the order of draws is fixed so a seed always gives the same chain."""
    logo_fonts, body_fonts = _fonts(LOGO_FONTS), _fonts(BODY_FONTS)
    coloured = rng.random() < 0.25
    hue = _pick(rng, ((200, 30, 30), (20, 60, 160), (20, 120, 50), (230, 110, 0), (120, 20, 120), (0, 120, 140)))
    tint_base = 246 + rng.integers(-8, 8)
    tint = (int(tint_base + rng.integers(-3, 5)), int(tint_base + rng.integers(-3, 4)), int(tint_base + rng.integers(-10, 2)))
    tint = tuple(int(min(255, max(215, t))) for t in tint)
    body_chars = int(rng.integers(28, 43))
    return Chain(
        name=name,
        known=known,
        lookalike_of=None,
        lookalike_kind=None,
        wordmark=_wordmark(name, rng),
        logo_font=_pick(rng, logo_fonts),
        logo_style=_pick(rng, LOGO_STYLES),
        logo_scale=float(rng.uniform(0.09, 0.17)),
        logo_tracking=float(_pick(rng, (0.0, 0.0, 0.05, 0.12, 0.25))),
        emblem=_pick(rng, EMBLEMS),
        emblem_pos=_pick(rng, ("left", "left", "right", "above")),
        emblem_fill=bool(rng.random() < 0.6),
        logo_color=hue if coloured else None,
        tagline=_pick(rng, TAGLINES) if rng.random() < 0.4 else None,
        header_align=_pick(rng, ("center", "center", "center", "left")),
        legal_name=f"{name.upper()} {_pick(rng, ('d.o.o.', 'd.d.', 'Ltd', 'GmbH', 'j.d.o.o.', 'Inc.'))}",
        address=(f"{_pick(rng, STREETS)} {int(rng.integers(1, 200))}", _pick(rng, CITIES)),
        phone=(_phone(rng) if rng.random() < 0.7 else None),
        store_fmt=_pick(rng, STORE_FORMATS),
        tax_id=(f"{_pick(rng, ('OIB', 'VAT ID', 'Tax No.', 'UID'))}: {_digits(rng, 11)}" if rng.random() < 0.75 else None),
        n_stores=int(rng.integers(3, 300)),
        body_font=_pick(rng, body_fonts),
        body_chars=body_chars,
        line_spacing=float(rng.uniform(1.05, 1.45)),
        separator=_pick(rng, SEPARATORS),
        columns=_pick(rng, COLUMNS),
        item_upper=bool(rng.random() < 0.65),
        decimal=_pick(rng, (",", ",", ".")),
        currency=_pick(rng, CURRENCIES),
        tax_codes=_pick(rng, ("letters", "letters", "star", "percent", "none")),
        total_label=_pick(rng, TOTAL_LABELS),
        total_style=_pick(rng, ("bold", "double", "double", "boxed", "inverted")),
        tax_label=_pick(rng, TAX_LABELS),
        tax_table=bool(rng.random() < 0.6),
        date_fmt=_pick(rng, DATE_FORMATS),
        date_pos=_pick(rng, ("header", "footer")),
        fiscal_codes=bool(rng.random() < 0.4),
        barcode=_pick(rng, BARCODES),
        slogan=_pick(rng, SLOGANS) if rng.random() < 0.7 else None,
        survey=(f"Tell us how we did: {name.lower()}.example/survey" if rng.random() < 0.4 else None),
        thanks=_pick(rng, THANKS),
        footer_align=_pick(rng, ("center", "center", "left")),
        paper_mm=int(_pick(rng, (58, 80, 80))),
        tint=tint,
        ink=int(rng.integers(10, 70)),
        fade=float(rng.uniform(0.0, 0.35)),
    )


def _near_name(name: str, taken: set[str], rng) -> str:
    """One letter off (a vowel swapped or a consonant doubled), still a valid CamelCase folder name."""
    vowels = "aeiou"
    for _ in range(50):
        i = int(rng.integers(1, len(name)))
        ch = name[i]
        if ch.lower() in vowels:
            new = name[:i] + _pick(rng, [v for v in vowels if v != ch.lower()]) + name[i + 1:]
        elif ch.isalpha() and ch.islower():
            new = name[:i] + ch + name[i:]
        else:
            continue
        if new not in taken and new[0].isupper():
            return new
    return name + "o"


def _one_letter_off(text: str, rng) -> str:
    """Swap one vowel of a wordmark for another, keeping its case (BRUNVIK -> BRUNVEK)."""
    idx = [i for i, ch in enumerate(text) if ch.lower() in "aeiou" and i > 0]
    if not idx:
        return text + ("O" if text.isupper() else "o")
    i = idx[int(rng.integers(len(idx)))]
    new = _pick(rng, [v for v in "aeiou" if v != text[i].lower()])
    return text[:i] + (new.upper() if text[i].isupper() else new) + text[i + 1:]


def _lookalike(target: Chain, own: Chain, rng, kind: str) -> Chain:
    """An unknown chain wearing (nearly) the target's logo: with its own header, body, footer and paper
    (kind "logo"), or on the target's template family too, keeping only its own firm (kind "logo_and_template")."""
    if kind not in LOOKALIKE_KINDS:
        raise ValueError(f"lookalike kind {kind!r} is not one of {LOOKALIKE_KINDS}")
    same_text = rng.random() < 0.5
    wordmark = target.wordmark if same_text else _one_letter_off(target.wordmark, rng)
    if kind == "logo_and_template":
        own = replace(own, **{f: getattr(target, f) for f in TEMPLATE_FAMILY})
        # its shops print on the same system: the target's printers' settings, its own addresses
        own = replace(own, stores=tuple(replace(s, ink=t.ink, fade=t.fade, heavy=t.heavy)
                                        for s, t in zip(own.stores, target.stores * len(own.stores))))
    return replace(
        own,
        lookalike_of=target.name,
        lookalike_kind=kind,
        wordmark=wordmark,
        logo_font=target.logo_font,
        logo_style=target.logo_style,
        logo_scale=target.logo_scale * float(rng.uniform(0.9, 1.1)),
        logo_tracking=target.logo_tracking,
        emblem=target.emblem,
        emblem_pos=target.emblem_pos,
        emblem_fill=target.emblem_fill,
        logo_color=target.logo_color,
        tagline=own.tagline,
    )


def _extra_names(rng, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        parts = [_pick(rng, SYLLABLES) for _ in range(int(rng.integers(2, 4)))]
        nm = "".join(parts).capitalize()
        if nm not in taken and len(nm) >= 4:
            taken.add(nm)
            out.append(nm)
    return out


def make_world(seed: int = 0, *, n_known: int = 25, n_unknown_val: int = 16, n_unknown_test: int = 16,
               n_lookalike: int = 5) -> World:
    """The chains of one seed. Val and test unknown chains are disjoint, so Other thresholds tuned on val
    never see a test chain. Each split gets `n_lookalike` lookalikes of distinct known chains, alternately
    of kind "logo_and_template" and "logo"."""
    for nm, v in (("n_known", n_known), ("n_unknown_val", n_unknown_val), ("n_unknown_test", n_unknown_test)):
        if v < 1:
            raise ValueError(f"make_world: {nm}={v} must be at least 1")
    if n_known > len(KNOWN_NAMES):
        raise ValueError(f"make_world: n_known={n_known} is more than the {len(KNOWN_NAMES)} known chain names")
    n_lookalike = min(n_lookalike, n_unknown_val - 1, n_unknown_test - 1, n_known) if n_lookalike > 0 else 0
    n_lookalike = max(n_lookalike, 0)
    rng = np.random.default_rng([seed, 7101])
    known = tuple(_with_variation(_identity(nm, True, np.random.default_rng([seed, 1, i])), np.random.default_rng([seed, 4, i]))
                  for i, nm in enumerate(KNOWN_NAMES[:n_known]))

    taken = set(KNOWN_NAMES) | set(UNKNOWN_NAMES)
    n_plain = (n_unknown_val - n_lookalike) + (n_unknown_test - n_lookalike)
    pool = list(UNKNOWN_NAMES)
    if n_plain > len(pool):
        pool += _extra_names(rng, n_plain - len(pool), taken)
    pool = [pool[i] for i in rng.permutation(len(pool))][:n_plain]
    plain = [_with_variation(_identity(nm, False, np.random.default_rng([seed, 2, i])), np.random.default_rng([seed, 5, i]))
             for i, nm in enumerate(pool)]

    targets = [known[i] for i in rng.permutation(n_known)[: 2 * n_lookalike]] if n_lookalike else []
    if len(targets) < 2 * n_lookalike:  # few known chains: val and test imitate the same ones
        targets = (targets * 2)[: 2 * n_lookalike]
    looks = []
    for j, target in enumerate(targets):
        lrng = np.random.default_rng([seed, 3, j])
        nm = _near_name(target.name, taken, lrng)
        taken.add(nm)
        # within each split the kinds alternate, starting with the harder one
        kind = LOOKALIKE_KINDS[1 - (j % n_lookalike) % 2]
        own = _with_variation(_identity(nm, False, lrng), np.random.default_rng([seed, 6, j]))
        looks.append(_lookalike(target, own, lrng, kind))
    nv = n_unknown_val - n_lookalike
    unknown_val = tuple(plain[:nv] + looks[:n_lookalike])
    unknown_test = tuple(plain[nv:] + looks[n_lookalike:])
    return World(seed=seed, known=known, unknown_val=unknown_val, unknown_test=unknown_test)
