"""Design style: the contract's design tokens and accessibility basics, checked in the source.

Colours must come from the palette, fonts from the allowed families, margins and paddings
from the spacing scale; images need ``alt``, form fields need a label, and text/background
pairs declared together need a WCAG contrast ratio of at least 4.5. Styles are read from
CSS files, ``<style>`` blocks, ``style="..."`` attributes and JSX style objects.
"""

from __future__ import annotations

import colorsys
import re
import time
from collections.abc import Iterator

from sandbox_agents.backends.base import Sandbox
from sandbox_agents.verifiers.base import DesignTokens, SourceFile, VerifyTarget, build_report, read_sources
from sandbox_agents.verifiers.models import Finding, Severity, VerifierReport

RGB = tuple[float, float, float]
E, W = Severity.ERROR, Severity.WARNING
_STYLE_SUFFIXES = frozenset({".css", ".scss", ".html", ".htm", ".jsx", ".tsx", ".vue", ".svelte"})
_MARKUP_SUFFIXES = frozenset({".html", ".htm", ".jsx", ".tsx", ".vue", ".svelte"})
NAMED = {
    "black": "#000000", "white": "#ffffff", "red": "#ff0000", "green": "#008000", "blue": "#0000ff",
    "yellow": "#ffff00", "orange": "#ffa500", "purple": "#800080", "gray": "#808080", "grey": "#808080",
    "silver": "#c0c0c0", "navy": "#000080", "teal": "#008080", "maroon": "#800000", "lime": "#00ff00",
    "aqua": "#00ffff", "cyan": "#00ffff", "fuchsia": "#ff00ff", "magenta": "#ff00ff", "olive": "#808000",
    "pink": "#ffc0cb", "brown": "#a52a2a", "gold": "#ffd700", "indigo": "#4b0082", "violet": "#ee82ee",
    "lightgray": "#d3d3d3", "lightgrey": "#d3d3d3", "darkgray": "#a9a9a9", "darkgrey": "#a9a9a9", "coral": "#ff7f50",
    "tomato": "#ff6347", "hotpink": "#ff69b4", "crimson": "#dc143c", "whitesmoke": "#f5f5f5",
}  # fmt: skip
GENERIC_FONTS = frozenset(
    {"serif", "sans-serif", "monospace", "cursive", "fantasy", "system-ui", "emoji", "math", "inherit", "initial"}
    | {"ui-serif", "ui-sans-serif", "ui-monospace", "ui-rounded", "unset", "-apple-system", "blinkmacsystemfont"}
)
_COLOR_TOKEN = re.compile(
    r"#[0-9a-fA-F]{3,8}\b|rgba?\([^)]*\)|hsla?\([^)]*\)|\b(?:" + "|".join(NAMED) + r")\b", re.IGNORECASE
)
_COLOR_PROPS = re.compile(
    r"^(?:--.*|color|background(?:-color)?|border(?:-[\w-]+)?|outline(?:-color)?|fill|stroke|"
    r"box-shadow|text-shadow|caret-color|accent-color|text-decoration(?:-color)?)$"
)
_SPACING_PROPS = re.compile(r"^(?:margin|padding)(?:-(?:top|right|bottom|left|inline|block)(?:-start|-end)?)?$|gap$")
_DECLARATION = re.compile(r"(?P<prop>--?[\w-]+|[a-zA-Z]+)\s*:\s*(?P<value>[^;{}]+?)\s*(?=;|\}|$)")
_RULE = re.compile(r"(?P<selector>[^{}]*)\{(?P<body>[^{}]*)\}")
_STYLE_BLOCK = re.compile(r"<style[^>]*>(?P<css>.*?)</style>", re.DOTALL | re.IGNORECASE)
_STYLE_ATTR = re.compile(r"""\bstyle\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)')""", re.IGNORECASE)
_JSX_STYLE = re.compile(r"style=\{\{(?P<css>[^}]*)\}\}")


def parse_color(text: str) -> tuple[RGB, float] | None:
    """A CSS colour as ((r, g, b) in 0..255, alpha); None for what is not a literal colour."""
    value = text.strip().lower()
    if value in NAMED:
        value = NAMED[value]
    if value.startswith("#"):
        digits = value[1:]
        if len(digits) in (3, 4):
            digits = "".join(c * 2 for c in digits)
        if len(digits) not in (6, 8):
            return None
        alpha = int(digits[6:8], 16) / 255 if len(digits) == 8 else 1.0
        return (float(int(digits[0:2], 16)), float(int(digits[2:4], 16)), float(int(digits[4:6], 16))), alpha
    if match := re.fullmatch(r"(rgba?|hsla?)\(([^)]*)\)", value):
        parts = [p for p in re.split(r"[\s,/]+", match.group(2)) if p]
        if len(parts) < 3 or any("var" in p for p in parts):
            return None
        alpha = _number(parts[3], 1.0) if len(parts) > 3 else 1.0
        if match.group(1).startswith("rgb"):
            return (_number(parts[0], 255.0), _number(parts[1], 255.0), _number(parts[2], 255.0)), alpha
        hue = float(parts[0].rstrip("deg")) / 360.0
        r, g, b = colorsys.hls_to_rgb(hue % 1.0, _number(parts[2], 1.0), _number(parts[1], 1.0))
        return (round(r * 255.0), round(g * 255.0), round(b * 255.0)), alpha
    return None


def _number(part: str, scale: float) -> float:
    return float(part[:-1]) / 100.0 * scale if part.endswith("%") else float(part)


def contrast_ratio(first: RGB, second: RGB) -> float:
    """WCAG 2 contrast ratio of two sRGB colours, 1..21."""

    def luminance(rgb: RGB) -> float:
        linear = [c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def css_regions(source: SourceFile) -> Iterator[tuple[int, str, bool]]:
    """(offset, css text, is_rule_list) for every piece of styling in a file."""
    if source.suffix in (".css", ".scss"):
        yield 0, _blank_comments(source.text), True
        return
    for match in _STYLE_BLOCK.finditer(source.text):
        yield match.start("css"), _blank_comments(match.group("css")), True
    for match in _STYLE_ATTR.finditer(source.text):
        group = "dq" if match.group("dq") is not None else "sq"
        yield match.start(group), match.group(group), False
    for match in _JSX_STYLE.finditer(source.text):
        css = re.sub(r"([a-z])([A-Z])", lambda m: f"{m.group(1)}-{m.group(2).lower()}", match.group("css"))
        yield match.start("css"), css.replace("'", " ").replace('"', " ").replace(",", ";"), False


def _blank_comments(css: str) -> str:
    return re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), css, flags=re.DOTALL)


class DesignStyleChecker:
    """Design tokens (palette, fonts, spacing) and accessibility basics (alt, labels, contrast)."""

    name = "design_style"

    def __init__(self, min_contrast: float = 4.5) -> None:
        self.min_contrast = min_contrast

    async def verify(self, sandbox: Sandbox, target: VerifyTarget) -> VerifierReport:
        started = time.monotonic()
        files = await read_sources(sandbox, target, _STYLE_SUFFIXES)
        findings: list[Finding] = []
        for source in files:
            for offset, css, is_rules in css_regions(source):
                findings += self._tokens(source, offset, css, target.tokens)
                findings += self._contrast(source, offset, css, is_rules)
            if source.suffix in _MARKUP_SUFFIXES:
                findings += accessibility(source)
        details = {"files": len(files), "tokens": target.tokens is not None}
        return build_report(self.name, findings, started, details)

    def _tokens(self, source: SourceFile, offset: int, css: str, tokens: DesignTokens | None) -> list[Finding]:
        if tokens is None:
            return []
        palette = {parse_color(c)[0] for c in tokens.colors if parse_color(c)}  # type: ignore[index]
        fonts = {f.strip().strip("'\"").lower() for f in tokens.fonts}
        out = []
        for decl in _DECLARATION.finditer(css):
            prop, value = decl["prop"].lower(), decl["value"]
            line = source.line_of(offset + decl.start())
            if palette and _COLOR_PROPS.match(prop):
                for token in _COLOR_TOKEN.findall(value):
                    parsed = parse_color(token)
                    if parsed and parsed[1] > 0 and parsed[0] not in palette:
                        message = f"{prop}: {token} is not in the palette ({', '.join(tokens.colors)})"
                        out.append(Finding(file=source.path, line=line, message=message, rule="design.color"))
            if fonts and prop == "font-family" and "var(" not in value:
                for family in (f.strip().strip("'\"") for f in value.split(",")):
                    if family and family.lower() not in fonts and family.lower() not in GENERIC_FONTS:
                        message = f"font {family!r} is not allowed ({', '.join(tokens.fonts)})"
                        out.append(Finding(file=source.path, line=line, message=message, rule="design.font"))
            if tokens.spacing and _SPACING_PROPS.search(prop):
                for amount in re.findall(r"(-?\d+(?:\.\d+)?)px", value):
                    if abs(float(amount)) not in {0.0, *map(float, tokens.spacing)}:
                        message = f"{prop}: {amount}px is off the spacing scale {tokens.spacing}"
                        out.append(
                            Finding(file=source.path, line=line, severity=W, message=message, rule="design.spacing")
                        )
        return out

    def _contrast(self, source: SourceFile, offset: int, css: str, is_rules: bool) -> list[Finding]:
        blocks = [(m.start("body"), m.group("body")) for m in _RULE.finditer(css)] if is_rules else [(0, css)]
        out = []
        for start, body in blocks:
            colors: dict[str, tuple[tuple[RGB, float], int]] = {}
            for decl in _DECLARATION.finditer(body):
                prop = decl["prop"].lower()
                if prop in ("color", "background", "background-color"):
                    tokens = _COLOR_TOKEN.findall(decl["value"])
                    parsed = parse_color(tokens[0]) if len(tokens) == 1 else None
                    if parsed:
                        colors["fg" if prop == "color" else "bg"] = (parsed, start + decl.start())
            if "fg" in colors and "bg" in colors and colors["fg"][0][1] == 1.0 and colors["bg"][0][1] == 1.0:
                ratio = contrast_ratio(colors["fg"][0][0], colors["bg"][0][0])
                if ratio < self.min_contrast:
                    line = source.line_of(offset + colors["fg"][1])
                    message = f"text contrast {ratio:.2f}:1 is below {self.min_contrast}:1 (WCAG AA)"
                    out.append(Finding(file=source.path, line=line, message=message, rule="design.contrast"))
        return out


def accessibility(source: SourceFile) -> list[Finding]:
    """Images without ``alt``; inputs without a label, ``aria-label`` or ``aria-labelledby``."""
    out = []
    text = source.text
    for match in re.finditer(r"<img\b[^>]*>", text, re.IGNORECASE):
        if not re.search(r"\balt\s*=", match.group(0), re.IGNORECASE):
            line = source.line_of(match.start())
            message = '<img> without alt text (use alt="" for decoration)'
            out.append(Finding(file=source.path, line=line, message=message, rule="design.img_alt"))
    labelled = set(re.findall(r"<label\b[^>]*\b(?:for|htmlFor)\s*=\s*[\"']([^\"']+)", text, re.IGNORECASE))
    for match in re.finditer(r"<(input|select|textarea)\b[^>]*>", text, re.IGNORECASE):
        tag = match.group(0)
        kind = re.search(r"\btype\s*=\s*[\"']?(\w+)", tag, re.IGNORECASE)
        if kind and kind.group(1).lower() in ("hidden", "submit", "button", "reset", "image"):
            continue
        if re.search(r"\baria-label(?:ledby)?\s*=|\btitle\s*=", tag, re.IGNORECASE):
            continue
        ident = re.search(r"\bid\s*=\s*[\"']([^\"']+)", tag, re.IGNORECASE)
        before = text[: match.start()].lower()
        inside_label = before.count("<label") > before.count("</label")
        if (ident and ident.group(1) in labelled) or inside_label:
            continue
        message = f"<{match.group(1)}> without a label, aria-label or aria-labelledby"
        out.append(Finding(file=source.path, line=source.line_of(match.start()), message=message, rule="design.label"))
    return out
